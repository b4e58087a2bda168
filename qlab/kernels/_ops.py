"""Registering ``torch.ops.qlab.*``: the C++ library, or the pure-PyTorch fallback, plus fake kernels.

The schemas are defined in C++ (``TORCH_LIBRARY(qlab, m)`` in ``qlab/csrc/ops.cpp``);
:data:`SCHEMAS` repeats them for the fallback, and a test checks the two agree.
Fake kernels (``torch.library.register_fake``) give the output's shape and dtype
without computing it, which is all ``torch.compile`` and ``torch.export`` need.

The state lives here rather than in ``qlab/kernels/__init__.py`` so that reloading
that module does not register the ops twice.
"""

from __future__ import annotations

import torch

from . import _validate, attention_reference, reference

SCHEMAS = {
    "int8_bmm": (
        "int8_bmm(Tensor a, Tensor b, float a_scale, int a_zero_point, float b_scale, int b_zero_point, "
        "float out_scale, int out_zero_point, ScalarType out_dtype, bool transpose_b, str requant) -> Tensor"
    ),
    "int8_linear": (
        "int8_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias, float x_scale, int x_zero_point, "
        "float out_scale, int out_zero_point, ScalarType out_dtype, bool relu, str requant) -> Tensor"
    ),
    "pack_linear_weight": "pack_linear_weight(Tensor weight) -> Tensor",
    "int8_linear_packed": (
        "int8_linear_packed(Tensor x, Tensor packed_weight, int out_features, Tensor weight_scale, Tensor? bias, "
        "float x_scale, int x_zero_point, float out_scale, int out_zero_point, ScalarType out_dtype, bool relu, "
        "Tensor? table, str requant, Tensor? residual=None) -> Tensor"
    ),
    "quantize_per_tensor": "quantize_per_tensor(Tensor x, float scale, int zero_point, ScalarType dtype) -> Tensor",
    "int8_attention": (
        "int8_attention(Tensor q, Tensor k, Tensor v, float q_scale, int q_zero_point, float k_scale, "
        "int k_zero_point, float v_scale, int v_zero_point, Tensor? bias, float out_scale, int out_zero_point, "
        "ScalarType out_dtype, str softmax, str requant, float p_scale=0.0039215686274509803) -> Tensor"
    ),
}

state = {"backend": None, "error": None, "library_path": None, "compiled_s": None, "lib": None, "fakes": False}


def ops_defined() -> bool:
    try:
        torch.ops.qlab.int8_bmm  # noqa: B018 -- raises AttributeError when not defined
        return True
    except (AttributeError, RuntimeError):
        return False


def register_fallback() -> None:
    """Define the ops in Python, served by :mod:`qlab.kernels.reference`."""
    lib = torch.library.Library("qlab", "DEF")
    for schema in SCHEMAS.values():
        lib.define(schema)
    lib.impl("int8_bmm", reference.int8_bmm, "CPU")
    lib.impl("int8_linear", reference.int8_linear, "CPU")
    lib.impl("pack_linear_weight", reference.pack_linear_weight, "CPU")
    lib.impl("int8_linear_packed", reference.int8_linear_packed, "CPU")
    lib.impl("quantize_per_tensor", reference.quantize_per_tensor, "CPU")
    lib.impl("int8_attention", attention_reference.int8_attention, "CPU")
    state["lib"] = lib  # the registration lives as long as this object


def _bmm_fake(
    a, b, a_scale, a_zero_point, b_scale, b_zero_point, out_scale, out_zero_point, out_dtype, transpose_b, requant
):
    M, N, _ = _validate.bmm_args(
        a, b, a_scale, a_zero_point, b_scale, b_zero_point, out_scale, out_zero_point, out_dtype, transpose_b, requant
    )
    return a.new_empty((*a.shape[:-2], M, N), dtype=out_dtype)


def _linear_fake(
    x, weight, weight_scale, bias, x_scale, x_zero_point, out_scale, out_zero_point, out_dtype, relu, requant
):
    N, _, _ = _validate.linear_args(
        x,
        weight,
        weight_scale,
        bias,
        x_scale,
        x_zero_point,
        out_scale,
        out_zero_point,
        out_dtype,
        relu,
        requant,
        check_values=False,
    )
    return x.new_empty((*x.shape[:-1], N), dtype=out_dtype)


def _pack_fake(weight):
    _validate.packed_weight_args(weight)
    return weight.new_empty((reference.packed_bytes(*weight.shape),))


def _linear_packed_fake(x, packed_weight, out_features, weight_scale, bias, x_scale, x_zero_point, out_scale,
                        out_zero_point, out_dtype, relu, table, requant, residual=None):
    _validate.packed_linear_args(x, packed_weight, out_features, out_dtype, table, residual)
    return x.new_empty((*x.shape[:-1], out_features), dtype=out_dtype if table is None else table.dtype)


def _quantize_fake(x, scale, zero_point, dtype):
    _validate.quantize_args(x, scale, zero_point, dtype)
    return x.new_empty(x.shape, dtype=dtype)


def _attention_fake(q, k, v, q_scale, q_zero_point, k_scale, k_zero_point, v_scale, v_zero_point, bias, out_scale,
                    out_zero_point, out_dtype, softmax, requant, p_scale=1.0 / 255.0):
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=out_dtype)


def register_fakes() -> None:
    if state["fakes"]:
        return
    torch.library.register_fake("qlab::int8_bmm")(_bmm_fake)
    torch.library.register_fake("qlab::int8_linear")(_linear_fake)
    torch.library.register_fake("qlab::pack_linear_weight")(_pack_fake)
    torch.library.register_fake("qlab::int8_linear_packed")(_linear_packed_fake)
    torch.library.register_fake("qlab::quantize_per_tensor")(_quantize_fake)
    torch.library.register_fake("qlab::int8_attention")(_attention_fake)
    state["fakes"] = True
