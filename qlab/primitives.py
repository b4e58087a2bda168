"""Quantization primitives: a few plain verbs, taught in ``notebooks/01-quantization-fundamentals.ipynb``.

The affine mapping between a real value ``r`` and its integer code ``q``::

    (1)  r = scale * (q - zero_point)
    (2)  q = clamp(round_half_even(r * (1 / scale)) + zero_point, qmin, qmax)

``scale`` is a positive float32, ``zero_point`` an integer in ``[qmin, qmax]``
chosen so that the real value 0 has an exact code (equation (5) below).

Choosing the parameters from an observed range ``[min_val, max_val]``, first
widened to contain 0 (``lo = min(min_val, 0)``, ``hi = max(max_val, 0)``)::

    (3)  affine:     scale = max((hi - lo) / (qmax - qmin), eps)
    (4)              zero_point = clamp(qmin - round(lo / scale), qmin, qmax)
    (5)  symmetric:  scale = max(max(-lo, hi) / ((qmax - qmin) / 2), eps)
                     zero_point = 0 (signed) or 128 (quint8)

These are PyTorch's formulas (``torch.ao.quantization`` observers,
``torch.quantize_per_tensor``/``_per_channel``, ``torch.fake_quantize_*``), and
each function here equals its PyTorch twin bit for bit: ``tests/test_primitives.py``
proves it with property-based tests. The results are plain integer tensors
(``torch.uint8``/``int8``/``int32``), not PyTorch's quantized tensors, so every
step is visible.

Two details matter for bit-exactness and are easy to miss:

* PyTorch multiplies by ``1 / scale`` computed in float32, it does not divide.
* Per-channel dequantization is computed in float64 and then rounded to
  float32; per-tensor dequantization is computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import (
    check_axis,
    check_bits,
    check_choice,
    check_finite,
    check_float_tensor,
    check_int,
    check_positive_scale,
    check_tensor,
    check_zero_point,
)

__all__ = [
    "INT_RANGES",
    "STORAGE",
    "PerTensor",
    "PerChannel",
    "qrange",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
]

#: The one integer-range table of qlab: every quantized dtype and plain integer dtype the workbook uses,
#: with its full range. Observers, kernels and checks all read it (through :func:`qrange`).
INT_RANGES = {
    torch.quint8: (0, 255),
    torch.qint8: (-128, 127),
    torch.qint32: (-(2**31), 2**31 - 1),
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int32: (-(2**31), 2**31 - 1),
}
#: The plain integer tensor that holds each quantized dtype's codes.
STORAGE = {torch.quint8: torch.uint8, torch.qint8: torch.int8, torch.qint32: torch.int32}
_DTYPES = list(STORAGE)


@dataclass(frozen=True)
class PerTensor:
    """One scale and zero point for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale and zero point per slice along ``axis`` (e.g. per output channel of a weight)."""

    axis: int = 0


def _check_granularity(granularity):
    if not isinstance(granularity, (PerTensor, PerChannel)):
        raise TypeError(f"granularity must be qlab.PerTensor() or qlab.PerChannel(axis), got {granularity!r}")
    return granularity


def qrange(
    dtype: torch.dtype = torch.quint8, *, bits: int | None = None, reduce_range: bool = False
) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a quantized dtype (``torch.quint8``, ``qint8``, ``qint32``) or of
    the plain integer dtype that stores it (``torch.uint8``, ``int8``, ``int32``): :data:`INT_RANGES`.

    ``bits`` narrows it to a ``bits``-wide range of the same signedness
    (unsigned: ``[0, 2**bits - 1]``, signed: ``[-2**(bits-1), 2**(bits-1) - 1]``).
    ``reduce_range`` drops one more bit, as PyTorch's x86/fbgemm activation
    qconfig does (quint8 -> ``[0, 127]``, qint8 -> ``[-64, 63]``): the AVX2
    ``vpmaddubsw`` instruction adds two uint8*int8 products into an int16, which
    can overflow at full range (notebook 01 shows when).
    """
    check_choice("dtype", dtype, list(INT_RANGES))
    lo, hi = INT_RANGES[dtype]
    signed = lo < 0
    wide = dtype in (torch.qint32, torch.int32)
    if bits is None:
        bits = 32 if wide else 8
    else:
        check_bits("bits", bits, 2, 32 if wide else 8)
    if reduce_range:
        bits -= 1
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _resolve_range(dtype, quant_min, quant_max):
    lo, hi = INT_RANGES[dtype]
    qmin = lo if quant_min is None else quant_min
    qmax = hi if quant_max is None else quant_max
    for name, v in (("quant_min", qmin), ("quant_max", qmax)):
        check_int(name, v)
        if not lo <= v <= hi:
            raise ValueError(f"{name} must lie in the {dtype} range [{lo}, {hi}], got {v}")
    if qmin >= qmax:
        raise ValueError(f"quant_min must be < quant_max, got quant_min={qmin}, quant_max={qmax}")
    return qmin, qmax


def choose_qparams(
    min_val,
    max_val,
    *,
    dtype: torch.dtype = torch.quint8,
    symmetric: bool = False,
    reduce_range: bool = False,
    quant_min: int | None = None,
    quant_max: int | None = None,
    eps: float = torch.finfo(torch.float32).eps,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` for an observed range, equations (3)-(5) of the module docstring.

    ``min_val``/``max_val``: 0-d tensors (per-tensor) or 1-d tensors (per-channel),
    float32 and finite. Returns a float32 scale and an integer zero point (int32 affine, int64 symmetric: torch.ao's
    dtypes), each of
    shape ``[1]`` for per-tensor and ``[C]`` for per-channel, exactly as
    ``torch.ao.quantization`` observers' ``calculate_qparams`` do.

    ``quant_min``/``quant_max`` give a custom range inside the dtype's; with
    ``reduce_range`` the range is :func:`qrange` with one bit less.
    """
    min_val = torch.as_tensor(min_val, dtype=torch.float32) if not isinstance(min_val, torch.Tensor) else min_val
    max_val = torch.as_tensor(max_val, dtype=torch.float32) if not isinstance(max_val, torch.Tensor) else max_val
    check_float_tensor("min_val", min_val)
    check_float_tensor("max_val", max_val)
    check_choice("dtype", dtype, [torch.quint8, torch.qint8])
    if min_val.shape != max_val.shape or min_val.dim() > 1:
        raise ValueError(
            f"min_val and max_val must be 0-d or 1-d tensors of one shape, got {tuple(min_val.shape)} and "
            f"{tuple(max_val.shape)}"
        )
    check_finite("min_val", min_val)
    check_finite("max_val", max_val)
    if bool((min_val > max_val).any()):
        raise ValueError(f"min_val must be <= max_val, got min_val={min_val.tolist()}, max_val={max_val.tolist()}")
    if not (isinstance(eps, float) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    if symmetric and reduce_range and dtype == torch.quint8:
        raise ValueError("reduce_range is not supported with symmetric quint8 (as in torch.ao): use qint8 or affine")
    custom = quant_min is not None or quant_max is not None
    if custom:
        if reduce_range:
            raise ValueError(
                "reduce_range cannot be combined with quant_min/quant_max: give the reduced range directly"
            )
        qmin, qmax = _resolve_range(dtype, quant_min, quant_max)
    else:
        qmin, qmax = qrange(dtype, reduce_range=reduce_range)

    lo = torch.minimum(min_val, torch.zeros_like(min_val))  # the range must contain 0 ...
    hi = torch.maximum(max_val, torch.zeros_like(max_val))  # ... so that 0 gets an exact code
    eps_t = torch.tensor([eps], dtype=torch.float32)
    zero_point = torch.zeros(lo.shape, dtype=torch.int64)
    if symmetric:
        hi = torch.maximum(-lo, hi)
        scale = torch.maximum(hi / (float(qmax - qmin) / 2), eps_t)
        if dtype == torch.quint8:
            zero_point = zero_point.new_full(zero_point.shape, (qmin + qmax) // 2 if custom else 128)
    else:
        scale = torch.maximum((hi - lo) / float(qmax - qmin), eps_t)
        zero_point = qmin - torch.round(lo / scale).to(torch.int)
        zero_point = torch.clamp(zero_point, qmin, qmax)  # int32 here, int64 when symmetric: as torch.ao
    if min_val.dim() == 0:
        scale = scale.reshape(1)
        zero_point = zero_point.reshape(1)
    return scale, zero_point


def _broadcast(param: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


def _qparams(x, scale, zero_point, granularity, qmin, qmax):
    """Validate and return (scale as float32, zero_point as int64), broadcastable against x."""
    check_positive_scale("scale", scale)
    check_zero_point("zero_point", zero_point, qmin, qmax)
    if isinstance(granularity, PerTensor):
        if isinstance(scale, torch.Tensor) and scale.numel() != 1:
            raise ValueError(f"scale must hold one value for PerTensor, got {scale.numel()}")
        if isinstance(zero_point, torch.Tensor) and zero_point.numel() != 1:
            raise ValueError(f"zero_point must hold one value for PerTensor, got {zero_point.numel()}")
        s = torch.tensor(float(scale), dtype=torch.float32)
        z = torch.tensor(int(zero_point), dtype=torch.int64)
        return s, z, None
    axis = check_axis("granularity.axis", granularity.axis, x.dim())
    channels = x.shape[axis]
    for name, p in (("scale", scale), ("zero_point", zero_point)):
        if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.numel() != channels:
            raise ValueError(f"{name} must be a 1-D tensor with {channels} values (x.shape[{axis}]) for PerChannel")
    s64 = scale.to(torch.float64)
    s = _broadcast(s64.to(torch.float32), x, axis)
    z = _broadcast(zero_point.to(torch.int64), x, axis)
    return s, z, _broadcast(s64, x, axis)


def quantize(
    x: torch.Tensor,
    scale,
    zero_point,
    dtype: torch.dtype = torch.quint8,
    granularity: PerTensor | PerChannel = PerTensor(),
    *,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> torch.Tensor:
    """Equation (2): float32 ``x`` -> integer codes (``uint8`` for quint8, ``int8``, ``int32``).

    Equals ``torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr()``
    (and ``quantize_per_channel`` for ``PerChannel``) bit for bit. ``x`` must be
    finite: PyTorch maps NaN/inf to arbitrary codes that differ between its own
    functions (notebook 01 shows this), so qlab refuses them.
    ``quant_min``/``quant_max`` narrow the clamp range (e.g. 4-bit codes in int8 storage).
    """
    check_float_tensor("x", x)
    check_choice("dtype", dtype, _DTYPES)
    _check_granularity(granularity)
    check_finite("x", x)
    qmin, qmax = _resolve_range(dtype, quant_min, quant_max)
    s, z, _ = _qparams(x, scale, zero_point, granularity, *INT_RANGES[dtype])
    return _codes(x, 1.0 / s, z, qmin, qmax).to(STORAGE[dtype])  # 1 / s in float32: PyTorch multiplies


def _codes(x: torch.Tensor, inv_scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Equation (2), the one place qlab turns floats into codes (``qlab.kernels.reference`` uses it too):
    ``clamp(round_half_even(x * inv_scale) + zero_point, qmin, qmax)`` with PyTorch's float32 steps --
    multiply by the float32 reciprocal, round, add the zero point *in float32*, clamp. Returns int64;
    NaN becomes ``qmin`` (the C++ op's convention; :func:`quantize` refuses NaN before it gets here)."""
    r = torch.round(x * inv_scale) + torch.as_tensor(zero_point).to(torch.float32)
    r = torch.nan_to_num(r, nan=float(qmin)).clamp(-(2.0**40), 2.0**40)  # an exact int64 conversion; clamp decides
    return r.to(torch.int64).clamp(qmin, qmax)


def dequantize(
    q: torch.Tensor,
    scale,
    zero_point,
    granularity: PerTensor | PerChannel = PerTensor(),
) -> torch.Tensor:
    """Equation (1): integer codes -> float32. Equals PyTorch's ``Tensor.dequantize()`` bit for bit."""
    check_tensor("q", q)
    if q.dtype not in STORAGE.values():
        raise TypeError(f"q must have dtype torch.uint8, torch.int8 or torch.int32 (integer codes), got {q.dtype}")
    _check_granularity(granularity)
    s, z, s64 = _qparams(q, scale, zero_point, granularity, *INT_RANGES[q.dtype])
    if s64 is None:
        return (q.to(torch.int64) - z).to(torch.float32) * s
    # ATen's per-channel kernel: (float(q) - zero_point) in float32, times the float64 scale.
    # Exact for 8-bit codes; for int32 codes the float32 subtraction rounds, as PyTorch's does.
    return ((q.to(torch.float32) - z.to(torch.float32)).to(torch.float64) * s64).to(torch.float32)


class _FakeQuantize(torch.autograd.Function):
    """Forward: quantize then dequantize. Backward: the straight-through estimator --
    the gradient passes unchanged where the code was not clamped, and is 0 where it was."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        r = torch.round(x * (1.0 / scale)).clamp(-(2.0**40), 2.0**40).to(torch.int64) + zero_point
        mask = (r >= qmin) & (r <= qmax)
        ctx.save_for_backward(mask)
        return (r.clamp(qmin, qmax) - zero_point).to(torch.float32) * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale,
    zero_point,
    dtype: torch.dtype = torch.quint8,
    granularity: PerTensor | PerChannel = PerTensor(),
    *,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> torch.Tensor:
    """Quantize and dequantize in one step, staying in float32: what QAT trains with.

    ``x_fq = (clamp(round(x / scale) + zero_point, quant_min, quant_max) - zero_point) * scale``, the
    arguments in :func:`quantize`'s order (the codes' dtype gives the range unless ``quant_min``/
    ``quant_max`` narrow it). Equals ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``
    bit for bit, forward and backward (straight-through estimator).
    """
    check_float_tensor("x", x)
    check_choice("dtype", dtype, _DTYPES)
    _check_granularity(granularity)
    check_finite("x", x)
    qmin, qmax = _resolve_range(dtype, quant_min, quant_max)
    s, z, _ = _qparams(x, scale, zero_point, granularity, qmin, qmax)
    return _FakeQuantize.apply(x, s, z, qmin, qmax)
