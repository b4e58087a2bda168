"""Measurements and figures for ``notebooks/01-quantization-fundamentals.ipynb``.

Every function returns numbers, so the notebook can assert what its plots show.
"""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure

from ._checks import (
    check_bits,
    check_float_tensor,
    check_int,
    check_number,
    check_tensor,
)
from .primitives import choose_qparams, dequantize, fake_quantize, qrange, quantize

__all__ = [
    "sqnr_db",
    "quantization_error",
    "error_vs_bits",
    "vpmaddubsw",
    "saturation_rate",
    "draw_quantization",
]


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum x^2 / sum (x - x_hat)^2)``."""
    check_float_tensor("x", x)
    check_float_tensor("x_hat", x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have one shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    noise = float(((x.double() - x_hat.double()) ** 2).sum())
    signal = float((x.double() ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def quantization_error(x: torch.Tensor, bits: int = 8, symmetric: bool = False) -> dict:
    """Quantize ``x`` per tensor over its min/max range with ``bits`` bits; return the error figures."""
    check_float_tensor("x", x)
    check_bits("bits", bits, 2, 8)
    dtype = torch.qint8 if symmetric else torch.quint8
    qmin, qmax = qrange(dtype, bits=bits)
    scale, zp = choose_qparams(x.min(), x.max(), dtype=dtype, symmetric=symmetric, quant_min=qmin, quant_max=qmax)
    x_hat = fake_quantize(x, scale, zp, dtype, quant_min=qmin, quant_max=qmax)
    err = x - x_hat
    return {
        "bits": bits,
        "scale": float(scale),
        "zero_point": int(zp),
        "max_abs_error": float(err.abs().max()),
        "rmse": float(err.pow(2).mean().sqrt()),
        "sqnr_db": sqnr_db(x, x_hat),
    }


def error_vs_bits(x: torch.Tensor, bits=range(2, 9)) -> list[dict]:
    """:func:`quantization_error` for each bit width: SQNR grows by about 6.02 dB per bit."""
    return [quantization_error(x, b) for b in bits]


def vpmaddubsw(a_u8: torch.Tensor, b_s8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Emulate AVX2 ``vpmaddubsw`` on pairs: ``sat16(a[2i]*b[2i] + a[2i+1]*b[2i+1])``.

    ``a_u8`` is unsigned (uint8), ``b_s8`` signed (int8), both with an even last
    dimension. Returns ``(result_int16, saturated_mask)``: the exact pair sum
    lies in [-65280, 64770], but the instruction saturates it to int16
    [-32768, 32767] -- the reason PyTorch's fbgemm/x86 qconfig quantizes
    activations to 7 bits (``reduce_range``): with a <= 127 the sum stays in range.
    AVX-512 VNNI's ``vpdpbusd`` adds four products into int32 and never saturates.
    """
    check_tensor("a_u8", a_u8)
    check_tensor("b_s8", b_s8)
    if a_u8.dtype != torch.uint8:
        raise TypeError(f"a_u8 must have dtype torch.uint8, got {a_u8.dtype}")
    if b_s8.dtype != torch.int8:
        raise TypeError(f"b_s8 must have dtype torch.int8, got {b_s8.dtype}")
    if a_u8.shape != b_s8.shape or a_u8.dim() == 0 or a_u8.shape[-1] % 2:
        raise ValueError(
            f"a_u8 and b_s8 must have one shape with an even last dimension, got {tuple(a_u8.shape)} and "
            f"{tuple(b_s8.shape)}"
        )
    prod = a_u8.to(torch.int32) * b_s8.to(torch.int32)
    pair = prod[..., 0::2] + prod[..., 1::2]
    sat = (pair > 32767) | (pair < -32768)
    return pair.clamp(-32768, 32767).to(torch.int16), sat


def saturation_rate(activation_max: int, n: int = 200_000, seed: int = 0) -> float:
    """Fraction of ``vpmaddubsw`` pairs that saturate for uniform activations in [0, activation_max]
    and uniform int8 weights in [-128, 127]."""
    check_int("activation_max", activation_max, 1, 255)
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, activation_max + 1, (n, 2), generator=g, dtype=torch.int32).to(torch.uint8)
    b = torch.randint(-128, 128, (n, 2), generator=g, dtype=torch.int32).to(torch.int8)
    _, sat = vpmaddubsw(a, b)
    return float(sat.float().mean())


def draw_quantization(
    fig: Figure, signal: torch.Tensor, bits: int = 8, clip: float = 1.0, zero_point_offset: int = 0
) -> dict:
    """The interactive figure of notebook 01: grid, quantized signal, error histogram.

    ``clip`` scales the observed range (``< 1`` clips the tails, ``> 1`` wastes levels);
    ``zero_point_offset`` shifts the chosen zero point by whole codes (0 is the choice
    of equation (4)). Returns the figures the plot shows.
    """
    check_float_tensor("signal", signal)
    check_bits("bits", bits, 2, 8)
    check_number("clip", clip, 0.05, 4.0)
    qmin, qmax = qrange(torch.quint8, bits=bits)
    lo, hi = float(signal.min()) * clip, float(signal.max()) * clip
    scale, zp = choose_qparams(torch.tensor(lo), torch.tensor(hi), quant_min=qmin, quant_max=qmax)
    zp = torch.clamp(zp + int(zero_point_offset), qmin, qmax)
    q = quantize(signal, scale, int(zp), torch.quint8, quant_min=qmin, quant_max=qmax)
    x_hat = dequantize(q, scale, int(zp))
    err = signal - x_hat
    clipped = float(((q == qmin) | (q == qmax)).float().mean())

    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    t = torch.arange(signal.numel())
    ax1.plot(t, signal, lw=1, color="0.6", label="float")
    ax1.step(t, x_hat, where="mid", lw=1.2, color="C0", label=f"{bits}-bit")
    levels = dequantize(torch.arange(qmin, qmax + 1, dtype=torch.int32), scale, int(zp))
    if len(levels) <= 64:
        for v in levels.tolist():
            ax1.axhline(v, lw=0.3, color="C1", alpha=0.6)
    ax1.set(title=f"scale={float(scale):.4g}  zero_point={int(zp)}", xlabel="sample")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.hist((err / scale).numpy(), bins=41, color="C2")
    ax2.set(title="error / scale (LSB)", xlabel="LSB")
    return {
        "scale": float(scale),
        "zero_point": int(zp),
        "levels": qmax - qmin + 1,
        "rmse": float(err.pow(2).mean().sqrt()),
        "max_abs_error_lsb": float((err.abs() / scale).max()),
        "clipped_fraction": clipped,
        "sqnr_db": sqnr_db(signal, x_hat),
    }
