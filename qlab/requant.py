"""Requantization arithmetic: int32 accumulator -> output codes, in float32 (PyTorch/fbgemm) or in
integers only (gemmlowp/TFLite). Shared by :mod:`qlab.kernels.reference` (notebook 08) and
:mod:`qlab.int_conv` (notebook 09); ``qlab/csrc/requant.h`` is the C++ twin.

With ``M = sa * sb / so`` the real multiplier of an output column::

    (1)  float:  out = clamp(round_half_even(float32(acc) * float32(M)) + zo, qmin, qmax)
    (2)  fixed:  M = qmul * 2**(shift - 31),  2**30 <= qmul < 2**31   (:func:`quantize_multiplier`)
                 out = clamp(rounding_divide_by_pot(high_mul(acc << max(shift, 0), qmul), max(-shift, 0)) + zo, ...)

``high_mul(a, b) = round(a * b / 2**31)`` (gemmlowp's ``SaturatingRoundingDoublingHighMul``), both
roundings half away from zero.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_number

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "quantize_multiplier",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "requantize_fixed",
    "requantize_float",
]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``m ≈ qmul * 2**(shift - 31)`` with ``2**30 <= qmul < 2**31``.

    ``m = q * 2**shift`` with ``q`` in [0.5, 1) (``math.frexp``); ``qmul = round(q * 2**31)``
    (half away from zero). Multipliers below 2^-32 become ``(0, 0)`` (the product is 0);
    above 2^30 they saturate.
    """
    check_number("m", m, 0)
    if m == 0:
        return 0, 0
    q, shift = math.frexp(m)
    qmul = math.floor(q * 2**31 + 0.5)  # exact in double: q has 53 bits
    if qmul == 2**31:  # q rounded up to 1.0
        qmul //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return 2**31 - 1, 30
    return qmul, shift


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``round(a * b / 2**31)`` on int32 values held in int64.

    The nudge ``2**30`` (or ``1 - 2**30`` for negative products) followed by a truncating
    division rounds to nearest; the single overflow, ``a == b == INT32_MIN``, saturates.
    """
    ab = a * b
    nudge = torch.where(ab >= 0, 2**30, 1 - 2**30)
    high = torch.div(ab + nudge, 2**31, rounding_mode="trunc")
    return torch.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded to nearest, ties away from zero."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(x.dtype)
    return (x >> exponent) + (remainder > threshold).to(x.dtype)


def multiply_by_quantized_multiplier(x: torch.Tensor, qmul: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """TFLite's ``MultiplyByQuantizedMultiplier``: ``x * qmul * 2**(shift - 31)``, rounded, in integers.

    ``x`` holds int32 values (as int64). A positive ``shift`` is a left shift first
    (saturated to int32 here; TFLite leaves that overflow undefined), a negative one
    a rounding right shift after the high multiply.
    """
    left = shift.clamp(min=0)
    right = (-shift).clamp(min=0)
    x = (x << left).clamp(INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, qmul), right)


def requantize_fixed(acc, multiplier, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(multiply_by_quantized_multiplier(acc, M) + zero_point, qmin, qmax)``, integers only.

    ``multiplier``: one float (or one per column, a 1-D float64 tensor / list) = ``sa * sb / so``.
    Returns int64 codes.
    """
    ms = multiplier.tolist() if isinstance(multiplier, torch.Tensor) else multiplier
    ms = ms if isinstance(ms, list) else [ms]
    qs = [quantize_multiplier(m) for m in ms]
    qmul = torch.tensor([q for q, _ in qs], dtype=torch.int64)
    shift = torch.tensor([s for _, s in qs], dtype=torch.int64)
    y = multiply_by_quantized_multiplier(acc.to(torch.int64), qmul, shift)
    return (y + zero_point).clamp(qmin, qmax)


def requantize_float(acc, multiplier, zero_point: int, qmin: int, qmax: int, bias_term=None) -> torch.Tensor:
    """``clamp(round_half_even((float32(acc) [+ bias_term]) * multiplier) + zero_point, qmin, qmax)``.

    ``multiplier`` (and ``bias_term``): float32 tensors broadcasting against ``acc``'s columns.
    ``acc.to(float32)`` rounds to nearest-even above 2^24, like the x86 instruction ``cvtdq2ps``;
    every step is one float32 operation, as in fbgemm's requantization. Returns int64 codes.
    """
    f = acc.to(torch.float32)
    if bias_term is not None:
        f = f + bias_term
    f = f * multiplier
    q = torch.round(f) + zero_point  # torch.round: half to even. Beyond 2^24 the clamp decides anyway.
    return q.clamp(qmin, qmax).to(torch.int64)
