"""Compiled int8 kernels for x86 CPUs: batched matmul and linear with fused requantization.

Taught in ``notebooks/08-vit-attention-int8.ipynb``. PyTorch has no int8 batched
matmul on x86 (``aten::bmm`` has no QuantizedCPU kernel, ``quantized::matmul``
dequantizes and runs float32); these ops keep attention's ``q·kᵀ`` and ``attn·v``
in int8. With ``a ≈ sa·(A − za)`` and ``b ≈ sb·(B − zb)``::

    accumulator   acc = Σ_k (A[m, k] − za)(B[k, n] − zb)              int32
    dequantized   out = acc · sa·sb                                   float32
    requantized   out = clamp(round(acc · sa·sb / so) + zo, qmin, qmax) uint8 / int8

``requant="float"`` rounds as PyTorch/fbgemm do (float32 multiplier, half to even:
bit-exact with ``torch.ao.nn.quantized.Linear`` on the x86 engine);
``requant="fixed"`` is the integer-only gemmlowp/TFLite scheme (31-bit multiplier
and shift), identical on every machine. :mod:`qlab.kernels.reference` spells both
out in plain PyTorch.

The ops are ``torch.ops.qlab.int8_bmm``, ``torch.ops.qlab.int8_linear``,
``torch.ops.qlab.pack_linear_weight`` + ``torch.ops.qlab.int8_linear_packed`` (the same linear on a
weight packed once, with a 256-entry table epilogue; notebook 12), ``torch.ops.qlab.int8_attention``
(the fused attention, :mod:`qlab.kernels.attention_reference`) and ``torch.ops.qlab.quantize_per_tensor``
(the float32 -> uint8/int8 step between int8 ops); custom ops with fake kernels: they work in eager
mode, ``torch.compile`` and ``torch.export``. :func:`int8_bmm`, :func:`int8_linear`,
:func:`pack_linear_weight`, :func:`int8_linear_packed` and :func:`quantize_per_tensor` are typed wrappers.

Backends. Importing this module loads the C++ extension (``qlab/csrc/``), compiling
it on first use (about a minute; ``python -m qlab.kernels`` does it ahead of time)
and caching it under ``~/.cache/qlab``. It picks a code path from CPUID at run time:
``amx`` (AMX-INT8 ``tdpbusd`` tiles, Sapphire Rapids and newer), ``avx512_vnni``
(``vpdpbusd`` on zmm), ``avx_vnni`` (the 256-bit VEX ``vpdpbusd`` of Intel's client cores, Alder Lake
and newer), ``avx2`` (``vpmaddwd`` on int16, never saturates) or ``scalar``; all
give identical results. Without a compiler, the same ops are served
by the pure-PyTorch reference, after one warning.

Environment variables: ``QLAB_NO_EXT=1`` (use the reference, do not build),
``QLAB_ISA=scalar|avx2|avx_vnni|avx512_vnni|amx|auto`` (force a path), ``QLAB_CACHE_DIR``
(where builds are cached), ``QLAB_BUILD_VERBOSE=1`` (show the compiler output),
``QLAB_KERNEL_TRACE=<file>`` (append ``$QLAB_NOTEBOOK`` to the file when this module loads: how
``make test`` learns which notebooks use the kernels, the ones it replays without the C++ extension).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from .._checks import check_choice, check_positive_scale
from . import _build, _ops, _validate, reference

__all__ = [
    "int8_bmm",
    "int8_linear",
    "pack_linear_weight",
    "int8_linear_packed",
    "quantize_per_tensor",
    "backend",
    "isa",
    "available_isas",
    "set_isa",
    "use_isa",
    "build",
    "reference",
]

ISAS = ("scalar", "avx2", "avx_vnni", "avx512_vnni", "amx")  # slowest to fastest, as available_isas() lists them


def _init() -> None:
    st = _ops.state
    if st["backend"] is not None:  # module reloaded: the ops already exist
        return
    if os.environ.get("QLAB_NO_EXT", "") not in ("", "0"):
        _ops.register_fallback()
        st["backend"], st["error"] = "reference", "QLAB_NO_EXT is set"
    else:
        try:
            t0 = time.perf_counter()
            st["library_path"], compiled = _build.compile_and_load(verbose=os.environ.get("QLAB_BUILD_VERBOSE") == "1")
            st["compiled_s"] = time.perf_counter() - t0 if compiled else None
            st["backend"] = "native"
        except Exception as exc:  # no compiler, no ninja, a compile error: fall back, say so once
            st["error"] = f"{type(exc).__name__}: {exc}"
            if _ops.ops_defined():  # loaded, but e.g. the cache marker could not be written
                st["backend"] = "native"
            else:
                _ops.register_fallback()
                st["backend"] = "reference"
                warnings.warn(
                    f"qlab.kernels: could not build the C++ extension ({_summary(exc)}); the ops run on the "
                    "pure-PyTorch reference (qlab/kernels/reference.py): same results, much slower. "
                    "`python -m qlab.kernels --verbose` shows why.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    _ops.register_fakes()
    if os.environ.get("QLAB_ISA") and st["backend"] == "native":
        set_isa(os.environ["QLAB_ISA"])
    if os.environ.get("QLAB_KERNEL_TRACE"):
        with open(os.environ["QLAB_KERNEL_TRACE"], "a") as f:
            f.write(os.environ.get("QLAB_NOTEBOOK", "-") + "\n")


def _summary(exc: BaseException) -> str:
    """The telling line of a build error (the compiler's message, not the command line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("FAILED", "[", "ninja:")) or " -c " in ln:
            continue
        if "error" in ln.lower() or "not found" in ln.lower():
            return ln[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


# ----------------------------------------------------------------------------------------------
# Backend and ISA control


def backend() -> str:
    """``"native"`` (the C++ extension) or ``"reference"`` (pure PyTorch, see :mod:`qlab.kernels.reference`)."""
    return _ops.state["backend"]


def isa() -> str:
    """The code path the ops use now: ``"amx"``, ``"avx512_vnni"``, ``"avx_vnni"``, ``"avx2"``, ``"scalar"``, or
    ``"reference"``."""
    if backend() != "native":
        return "reference"
    return torch.ops.qlab._get_isa()


def available_isas() -> list[str]:
    """The paths this CPU can run (CPUID), e.g. ``['scalar', 'avx2', 'avx512_vnni']``."""
    if backend() != "native":
        return ["reference"]
    return list(torch.ops.qlab._supported_isas())


def set_isa(name: str) -> None:
    """Force a code path (``"auto"``: the fastest this CPU supports). Results are identical on every path."""
    check_choice("name", name, ["auto", *ISAS, "reference"])
    if backend() != "native":
        if name not in ("auto", "reference"):
            raise ValueError(
                f"name must be one of ['auto', 'reference'] without the C++ extension ({_ops.state['error']}), "
                f"got {name!r}"
            )
        return
    if name == "reference":
        raise ValueError(
            f"name must be one of {['auto', *available_isas()]} with the C++ extension loaded, got 'reference'"
        )
    torch.ops.qlab._set_isa(name)


@contextlib.contextmanager
def use_isa(name: str):
    """``with use_isa("avx2"): ...`` runs the block on one path, then restores the previous one."""
    previous = isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous if previous != "reference" else "auto")


def build(verbose: bool = False) -> Path:
    """Compile the extension if it is not cached yet; return the path of the shared library.

    In a process that runs on the fallback (``QLAB_NO_EXT=1`` or a failed build) the
    compilation runs in a subprocess; restart Python to use the result.
    """
    if backend() == "native":
        return Path(_ops.state["library_path"] or _build.library_path())
    env = {k: v for k, v in os.environ.items() if k != "QLAB_NO_EXT"}
    if verbose:
        env["QLAB_BUILD_VERBOSE"] = "1"
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys, qlab.kernels as k; sys.exit(0 if k.backend() == 'native' else 1)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=not verbose, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the qlab C++ extension failed:\n{(proc.stderr or '')[-4000:]}")
    return _build.library_path()


# ----------------------------------------------------------------------------------------------
# The typed wrappers. They turn keyword arguments and Python numbers into the op's schema; the
# arguments are checked once, by the op itself -- in C++ (native) or by ``_validate`` (the reference
# and the fake kernels) -- with the same messages.


def _out_qparams(out_dtype, out_scale, out_zero_point):
    check_choice("out_dtype", out_dtype, _validate.OUT_DTYPES)
    if out_dtype in _validate.QRANGE:
        if out_scale is None:
            raise ValueError(f"out_scale is required for out_dtype {out_dtype} (the scale of the requantized output)")
        return out_scale, out_zero_point
    if out_scale is not None or out_zero_point != 0:
        raise ValueError(
            "out_scale and out_zero_point apply to out_dtype torch.uint8 / torch.int8 only; leave them unset "
            f"for {out_dtype}"
        )
    return 1.0, 0


def _weight_scale(weight_scale) -> torch.Tensor:
    """A float or 0-d tensor (per-tensor) or a ``[out_features]`` tensor (per-channel) as the ops take it: float32
    (float64 is rounded to float32, as PyTorch does)."""
    if isinstance(weight_scale, torch.Tensor):
        return weight_scale.to(torch.float32) if weight_scale.dtype == torch.float64 else weight_scale
    return torch.tensor(check_positive_scale("weight_scale", weight_scale), dtype=torch.float32)


def int8_bmm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_scale: float,
    a_zero_point: int,
    b_scale: float,
    b_zero_point: int = 0,
    out_scale: float | None = None,
    out_zero_point: int = 0,
    out_dtype: torch.dtype = torch.uint8,
    transpose_b: bool = False,
    requant: str = "float",
) -> torch.Tensor:
    """Batched int8 matmul with fused requantization: ``a @ b`` or, with ``transpose_b``, ``a @ b.mT``.

    ``a``: uint8 or int8 ``[..., M, K]``; ``b``: int8 ``[..., K, N]`` (``[..., N, K]`` with
    ``transpose_b=True``, as the keys in ``q·kᵀ``), the same batch dimensions; any strides
    (transposed or sliced views are read in place). Per-tensor scale and zero point for
    each input and for the output. Returns a contiguous ``[..., M, N]`` tensor of ``out_dtype``:

    * ``torch.uint8`` / ``torch.int8``: ``clamp(round(acc · sa·sb / so) + zo, qmin, qmax)``,
      needs ``out_scale`` (``so``) and ``out_zero_point`` (``zo``);
    * ``torch.int32``: ``acc = Σ_k (a − za)(b − zb)`` (wraps modulo 2^32; exact for K ≤ 33025);
    * ``torch.float32``: ``acc · float32(sa·sb)``.

    ``requant``: ``"float"`` (PyTorch's float32 multiplier) or ``"fixed"`` (gemmlowp integers).
    Notebook: ``notebooks/08-vit-attention-int8.ipynb``.
    """
    out_scale, out_zero_point = _out_qparams(out_dtype, out_scale, out_zero_point)
    _validate.python_types(
        a=(a, "tensor"),
        b=(b, "tensor"),
        a_scale=(a_scale, "float"),
        a_zero_point=(a_zero_point, "int"),
        b_scale=(b_scale, "float"),
        b_zero_point=(b_zero_point, "int"),
        out_scale=(out_scale, "float"),
        out_zero_point=(out_zero_point, "int"),
        transpose_b=(transpose_b, "bool"),
        requant=(requant, "str"),
    )
    return torch.ops.qlab.int8_bmm(
        a, b, a_scale, a_zero_point, b_scale, b_zero_point, out_scale, out_zero_point, out_dtype, transpose_b, requant
    )


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale,
    bias: torch.Tensor | None = None,
    *,
    x_scale: float,
    x_zero_point: int,
    out_scale: float | None = None,
    out_zero_point: int = 0,
    out_dtype: torch.dtype = torch.uint8,
    relu: bool = False,
    requant: str = "float",
) -> torch.Tensor:
    """int8 linear layer ``x @ weight.T + bias`` with fused (ReLU and) requantization.

    ``x``: uint8 or int8 activations ``[..., in_features]`` (scale ``x_scale``, zero point
    ``x_zero_point``); ``weight``: int8 ``[out_features, in_features]``, symmetric (zero
    point 0); ``weight_scale``: a float or 0-d tensor (per-tensor) or ``[out_features]``
    tensor (per-channel; float64 is rounded to float32, as PyTorch does). ``bias``:

    * ``torch.int32``: added to the accumulator, in units of ``x_scale · weight_scale``;
    * ``torch.float32``: PyTorch's float bias, added exactly as fbgemm does (``requant="float"``).

    ``acc = Σ_k (x − zx)·w + bias``; output as in :func:`int8_bmm`. ``relu=True`` clamps the
    output at ``out_zero_point`` (at 0 for int32/float32). With a float bias and
    ``requant="float"`` the result equals ``torch.ao.nn.quantized.Linear`` (x86 engine) bit for bit.
    Notebook: ``notebooks/08-vit-attention-int8.ipynb``.
    """
    weight_scale = _weight_scale(weight_scale)
    out_scale, out_zero_point = _out_qparams(out_dtype, out_scale, out_zero_point)
    _validate.python_types(
        x=(x, "tensor"),
        weight=(weight, "tensor"),
        bias=(bias, "tensor?"),
        x_scale=(x_scale, "float"),
        x_zero_point=(x_zero_point, "int"),
        out_scale=(out_scale, "float"),
        out_zero_point=(out_zero_point, "int"),
        relu=(relu, "bool"),
        requant=(requant, "str"),
    )
    return torch.ops.qlab.int8_linear(
        x, weight, weight_scale, bias, x_scale, x_zero_point, out_scale, out_zero_point, out_dtype, relu, requant
    )


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """Pack an int8 ``[out_features, in_features]`` weight once, for :func:`int8_linear_packed`: the panels the
    AVX-512 VNNI and AMX paths read in place, with the column sums the zero point of x needs
    (:func:`qlab.kernels.reference.pack_linear_weight` spells the layout out). Notebook 12."""
    return torch.ops.qlab.pack_linear_weight(weight)


def int8_linear_packed(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    out_features: int,
    weight_scale,
    bias: torch.Tensor | None = None,
    *,
    x_scale: float,
    x_zero_point: int,
    out_scale: float | None = None,
    out_zero_point: int = 0,
    out_dtype: torch.dtype = torch.uint8,
    relu: bool = False,
    table: torch.Tensor | None = None,
    requant: str = "float",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`int8_linear` on a weight packed once by :func:`pack_linear_weight` (same results bit for bit), with
    one more epilogue: ``table``, 256 codes applied to the 8-bit output (``out = table[code − min(out_dtype)]``, the
    result of the table's dtype): a GELU between two per-tensor-quantized activations, exactly
    (:func:`qlab.int8_mlp.gelu_table`). The VNNI and AMX paths read the packed panels in place, the AVX2 path widens
    them to int16 as it goes (or, when every code of x is below 128, multiplies bytes with ``vpmaddubsw``, exact for
    such codes), the scalar path unpacks the weight per call. ``residual`` (float32 output only): added
    to the output in the same pass (``out + residual``, a skip connection). Notebook 12.
    """
    weight_scale = _weight_scale(weight_scale)
    out_scale, out_zero_point = _out_qparams(out_dtype, out_scale, out_zero_point)
    _validate.python_types(
        x=(x, "tensor"),
        packed_weight=(packed_weight, "tensor"),
        out_features=(out_features, "int"),
        bias=(bias, "tensor?"),
        x_scale=(x_scale, "float"),
        x_zero_point=(x_zero_point, "int"),
        out_scale=(out_scale, "float"),
        out_zero_point=(out_zero_point, "int"),
        relu=(relu, "bool"),
        table=(table, "tensor?"),
        requant=(requant, "str"),
        residual=(residual, "tensor?"),
    )
    return torch.ops.qlab.int8_linear_packed(
        x, packed_weight, out_features, weight_scale, bias, x_scale, x_zero_point, out_scale, out_zero_point,
        out_dtype, relu, table, requant, residual
    )


def quantize_per_tensor(
    x: torch.Tensor, scale: float, zero_point: int, dtype: torch.dtype = torch.uint8
) -> torch.Tensor:
    """float32 ``x`` -> plain uint8/int8 codes ``clamp(nearbyint(x * float32(1/scale)) + zero_point, qmin, qmax)``.

    Every step in float32, rounding half to even: the same codes as PyTorch's deprecated
    ``torch.quantize_per_tensor(...).int_repr()`` and :func:`qlab.quantize`, bit for bit, in one
    pass and without a quantized tensor. NaN gives qmin. Returns a contiguous tensor of ``x``'s shape.
    Notebook: ``notebooks/08-vit-attention-int8.ipynb`` (fix 4).
    """
    _validate.python_types(
        x=(x, "tensor"), scale=(scale, "float"), zero_point=(zero_point, "int"), dtype=(dtype, "dtype")
    )
    return torch.ops.qlab.quantize_per_tensor(x, scale, zero_point, dtype)


_init()
