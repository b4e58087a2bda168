"""The int8 kernels in plain PyTorch: the definition the C++ code must match bit for bit.

Taught in ``notebooks/08-vit-attention-int8.ipynb``. Read this file first; the
C++ in ``qlab/csrc/`` computes exactly these integers, only faster.

An int8 matrix product with real values ``A_real ≈ sa * (A - za)`` and
``B_real ≈ sb * (B - zb)`` is::

    (1)  acc[m, n] = Σ_k (A[m, k] - za) * (B[k, n] - zb)            int32
    (2)  A_real @ B_real ≈ sa * sb * acc                            (dequantized, float32)
    (3)  out[m, n] = clamp(round(acc * sa * sb / so) + zo, qmin, qmax)   (requantized)

Step (1) is exact integer arithmetic (here a float64 matmul, exact because every partial sum is an integer below
2^53 -- |a - za|, |b - zb| <= 255 -- and much faster than int64's, which AVX2 has no multiply for; int32 in the
kernels, which wraps modulo 2^32 but cannot overflow below K = 33025).
Step (3) needs the real number ``M = sa * sb / so`` and comes in two flavours:

* ``requant="float"`` -- PyTorch/fbgemm: ``M`` as a float32, ``round`` half to even::

      multiplier = float32(float32(sa * sb) / so)
      out = clamp(round_half_even(float32(acc) * multiplier) + zo, qmin, qmax)

  With PyTorch's float bias (``torch.ao.nn.quantized.Linear``), fbgemm adds it
  *before* the multiply, as ``bias / float32(sa * sb)`` (per-channel weights) or
  ``bias * float32(1 / (sa * sb))`` (per-tensor weights).
* ``requant="fixed"`` -- gemmlowp/TFLite: integers only, ``M = qmul * 2^(shift - 31)``
  with a 31-bit ``qmul``; see :func:`qlab.requant.quantize_multiplier` and :func:`qlab.requant.requantize_fixed`.

The functions :func:`int8_bmm` and :func:`int8_linear` take the same arguments, in
the same order, as ``torch.ops.qlab.int8_bmm`` / ``int8_linear``; they also serve
those ops when the C++ extension cannot be built (``QLAB_NO_EXT=1``).
"""

from __future__ import annotations

import torch

from ..primitives import _codes
from ..requant import requantize_fixed, requantize_float
from . import _validate

__all__ = [
    "wrap_int32",
    "int8_bmm",
    "int8_linear",
    "pack_linear_weight",
    "unpack_linear_weight",
    "int8_linear_packed",
    "quantize_per_tensor",
]

_QRANGE = _validate.QRANGE  # {torch.uint8: (0, 255), torch.int8: (-128, 127)}


def _f32(x: float) -> torch.Tensor:
    """A Python float rounded to float32 (as C++ ``static_cast<float>``), as a 0-d tensor."""
    return torch.tensor(x, dtype=torch.float32)


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 -> int32 modulo 2^32, as int32 hardware addition wraps."""
    return ((x + 2**31) % 2**32 - 2**31).to(torch.int32)


# ----------------------------------------------------------------------------------------------
# The two ops


def _finish(
    acc, out_dtype, requant, scale_ab, mult_real, out_scale, out_zero_point, relu=False, fbias=None, per_channel=True
):
    """Steps (2)/(3): turn the int32 accumulator into the requested output.

    ``scale_ab``: float32 ``sa * sb`` per column (1-D) or scalar (0-d);
    ``mult_real``: the real multiplier ``sa * sb / so`` in float64, per column or scalar.
    """
    if out_dtype == torch.int32:
        return acc.clamp(min=0) if relu else acc
    if out_dtype == torch.float32:
        f = acc.to(torch.float32) * scale_ab
        if fbias is not None:
            f = f + fbias
        return f.clamp(min=0.0) if relu else f
    qmin, qmax = _QRANGE[out_dtype]
    if relu:
        qmin = max(qmin, out_zero_point)
    if requant == "float":
        multiplier = scale_ab / _f32(out_scale)  # float32 / float32
        if not bool(torch.isfinite(multiplier).all() and (multiplier > 0).all()):
            raise ValueError(f"the requantization multiplier {multiplier.tolist()} is not a positive finite float32")
        bias_term = None
        if fbias is not None:
            if per_channel:
                bias_term = fbias / scale_ab
            else:
                bias_term = fbias * _f32(1.0 / float(scale_ab))  # fbgemm: reciprocal computed in double
        q = requantize_float(acc, multiplier, out_zero_point, qmin, qmax, bias_term)
    else:
        q = requantize_fixed(acc, mult_real, out_zero_point, qmin, qmax)
    return q.to(out_dtype)


def _exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Equation (1) as int64: a float64 matmul of integer-valued operands with |values| <= 255, exact while
    K * 255 * 255 < 2^53 (K below 10^11)."""
    if a.shape[-1] * 65025 >= 2**53:
        raise ValueError(f"K = {a.shape[-1]} is too large for an exact float64 accumulation")
    return torch.matmul(a, b).to(torch.int64)


def int8_bmm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: float,
    a_zero_point: int,
    b_scale: float,
    b_zero_point: int,
    out_scale: float,
    out_zero_point: int,
    out_dtype: torch.dtype,
    transpose_b: bool,
    requant: str,
) -> torch.Tensor:
    """Batched int8 matmul ``A @ B`` (or ``A @ B^T`` with ``transpose_b``), requantized.

    ``a``: ``[..., M, K]`` uint8/int8; ``b``: int8 ``[..., K, N]`` (``[..., N, K]`` with
    ``transpose_b``), same batch dims. Accumulator (1); output per ``out_dtype``:
    int32 -> ``acc``; float32 -> ``acc * float32(sa * sb)``; uint8/int8 -> (3) with
    ``out_scale``/``out_zero_point`` and ``requant`` ("float" or "fixed").
    """
    _validate.bmm_args(
        a, b, a_scale, a_zero_point, b_scale, b_zero_point, out_scale, out_zero_point, out_dtype, transpose_b, requant
    )
    if transpose_b:
        b = b.transpose(-1, -2)  # a view: B[k, n] = b[n, k]

    # (1) the exact integer accumulator, with the zero points subtracted explicitly
    acc = _exact_matmul(a.to(torch.float64) - a_zero_point, b.to(torch.float64) - b_zero_point)
    acc = wrap_int32(acc)

    scale_ab = _f32(a_scale) * _f32(b_scale)  # float32, as fbgemm's act_times_w_scale
    if not bool(torch.isfinite(scale_ab) and scale_ab > 0):
        raise ValueError(f"a_scale * b_scale = {float(scale_ab)} is not a positive finite float32")
    mult_real = float(_f32(a_scale)) * float(_f32(b_scale)) / float(_f32(out_scale)) if out_dtype in _QRANGE else 0.0
    return _finish(acc, out_dtype, requant, scale_ab, mult_real, out_scale, out_zero_point)


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    x_scale: float,
    x_zero_point: int,
    out_scale: float,
    out_zero_point: int,
    out_dtype: torch.dtype,
    relu: bool,
    requant: str,
) -> torch.Tensor:
    """int8 ``x @ weight.T + bias``: uint8/int8 activations, symmetric int8 weights (zero point 0).

    ``weight_scale``: float32, 0-d (per-tensor) or ``[out_features]`` (per-channel).
    ``bias``: ``None``, int32 (added to the accumulator, in units of ``x_scale * weight_scale``)
    or float32 (PyTorch's convention, real units; needs ``requant="float"``).
    ``relu`` clamps at the output zero point (at 0 for int32/float32 outputs).
    """
    _, _, per_channel = _validate.linear_args(
        x, weight, weight_scale, bias, x_scale, x_zero_point, out_scale, out_zero_point, out_dtype, relu, requant
    )
    fbias = bias if bias is not None and bias.dtype == torch.float32 else None

    # (1) with B = weight.T; the weight is symmetric (zero point 0)
    acc = _exact_matmul(x.to(torch.float64) - x_zero_point, weight.to(torch.float64).T)
    if bias is not None and bias.dtype == torch.int32:
        acc = acc + bias.to(torch.int64)
    acc = wrap_int32(acc)

    scale_ab = _f32(x_scale) * weight_scale  # float32 per channel (or 0-d)
    if not bool((torch.isfinite(scale_ab) & (scale_ab > 0)).all()):
        raise ValueError(f"x_scale * weight_scale = {scale_ab.tolist()} is not a positive finite float32")
    mult_real = None
    if out_dtype in _QRANGE:
        ws = weight_scale.to(torch.float64).reshape(-1).tolist()
        mult_real = [float(_f32(x_scale)) * w / float(_f32(out_scale)) for w in ws]
        mult_real = mult_real if per_channel else mult_real[0]
    return _finish(acc, out_dtype, requant, scale_ab, mult_real, out_scale, out_zero_point, relu, fbias, per_channel)


# ----------------------------------------------------------------------------------------------
# The prepacked weight: packed once when a model is converted, read by the VNNI and AMX paths in place

PANEL = 48  # columns per panel: 3 vectors of 16 int32 lanes (AVX-512), 3 AMX tiles of 16 columns


HEADER = 64  # bytes before the first panel
MAGIC = 0x31424C51  # "QLB1" as little-endian bytes


def packed_kp(in_features: int) -> int:
    """K rounded up to a multiple of 64 (one AMX tile row of A); at least 64."""
    return (max(in_features, 1) + 63) // 64 * 64


def packed_bytes(out_features: int, in_features: int) -> int:
    """Length of ``pack_linear_weight`` of an ``[out_features, in_features]`` weight."""
    return HEADER + (out_features + PANEL - 1) // PANEL * (packed_kp(in_features) * PANEL + 4 * PANEL)


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """The int8 weight ``[N, K]`` in the layout the VNNI and AMX paths read, computed once::

        header               = 64 bytes: int32 MAGIC, N, K, then zeros (the op checks them against its arguments)
        panel p              = columns [48p, 48p + 48) of weight.T, kp · 48 + 192 bytes:
          [:kp * W]          = [kp/4][W][4] int8: 4 consecutive k of one column, then the next column
                               (W = the panel's columns rounded up to 16, kp = K rounded up to 64, zeros padded)
          [kp * 48:]         = the 48 column sums Σ_k weight[n, k] as int32 (little-endian), zeros past N

    The column sums are what the zero point of x costs (``-zx · Σ_k w``, notebook 12), so nothing is summed per
    call. A 1-D int8 tensor of :func:`packed_bytes` ``(N, K)`` bytes; the panels start 64-byte aligned.
    """
    _validate.packed_weight_args(weight)
    N, K = weight.shape
    kp = packed_kp(K)
    n_panels = (N + PANEL - 1) // PANEL
    flat = torch.zeros(packed_bytes(N, K), dtype=torch.int8)
    flat[:HEADER].view(torch.int32)[:3] = torch.tensor([MAGIC, N, K], dtype=torch.int32)
    out = flat[HEADER:].view(n_panels, kp * PANEL + 4 * PANEL)
    for p in range(n_panels):
        cols = weight[p * PANEL : (p + 1) * PANEL]
        w = cols.shape[0]
        W = (w + 15) // 16 * 16
        block = torch.zeros(W, kp, dtype=torch.int8)
        block[:w, :K] = cols
        out[p, : kp * W] = block.reshape(W, kp // 4, 4).permute(1, 0, 2).reshape(-1)
        colsum = torch.zeros(PANEL, dtype=torch.int32)
        colsum[:w] = cols.to(torch.int32).sum(1, dtype=torch.int32)
        out[p, kp * PANEL :] = colsum.view(torch.int8)
    return flat


def unpack_linear_weight(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The inverse of :func:`pack_linear_weight`: the ``[out_features, in_features]`` int8 weight."""
    _validate.packed_args(packed, out_features, in_features)
    _validate.packed_header(packed, out_features, in_features)
    N, K = out_features, in_features
    kp = packed_kp(K)
    n_panels = (N + PANEL - 1) // PANEL
    panels = packed[HEADER:].view(n_panels, kp * PANEL + 4 * PANEL)
    rows = []
    for p in range(n_panels):
        w = min(PANEL, N - p * PANEL)
        W = (w + 15) // 16 * 16
        block = panels[p, : kp * W].reshape(kp // 4, W, 4).permute(1, 0, 2).reshape(W, kp)
        rows.append(block[:w, :K])
    return torch.cat(rows) if rows else torch.zeros(0, K, dtype=torch.int8)


def int8_linear_packed(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    out_features: int,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    x_scale: float,
    x_zero_point: int,
    out_scale: float,
    out_zero_point: int,
    out_dtype: torch.dtype,
    relu: bool,
    table: torch.Tensor | None,
    requant: str,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`int8_linear` with the weight packed by :func:`pack_linear_weight`, then (optionally) a 256-entry
    ``table`` on the 8-bit output codes: ``out = table[code - min(out_dtype)]``, of the table's dtype (a GELU
    evaluated exactly on per-tensor codes, notebook 12's equation (3)), or a float32 ``residual`` added to a float32
    output (``out + residual``: a transformer block's skip connection, one float32 add per element)."""
    _validate.packed_linear_args(x, packed_weight, out_features, out_dtype, table, residual)
    weight = unpack_linear_weight(packed_weight, out_features, x.shape[-1])
    out = int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, out_scale, out_zero_point, out_dtype,
                      relu, requant)
    if residual is not None:
        return out + residual
    if table is None:
        return out
    return table.contiguous()[out.to(torch.int64) - _QRANGE[out_dtype][0]]


def quantize_per_tensor(x: torch.Tensor, scale: float, zero_point: int, dtype: torch.dtype) -> torch.Tensor:
    """``clamp(nearbyint(x * float32(1 / scale)) + zero_point, qmin, qmax)``, every step in float32 (PyTorch's
    ``quantize_per_tensor`` arithmetic on x86, bit for bit); NaN gives qmin. Returns plain uint8/int8 codes."""
    _validate.quantize_args(x, scale, zero_point, dtype)
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    return _codes(x, inv, zero_point, *_QRANGE[dtype]).to(dtype)
