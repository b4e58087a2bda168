"""The fused int8 attention op in plain PyTorch (issue 15): the definition its C++ kernel must equal bit for bit.

One op computes, for ``q`` uint8 ``[..., T, D]``, ``k`` and ``v`` int8 ``[..., S, D]``::

    (1) logits = int8_bmm(q, k, transpose_b) -> float32          acc · float32(s_q · s_k)      (reference.int8_bmm)
    (2) logits += bias; masked keys out                           the additive mask of qlab.bert_attention (or none)
    (3) P = softmax(logits) -> uint8 codes, scale p_scale         "float": the fixed-order float softmax below
                                                                  "int":   I-BERT's integer softmax (qlab.intonly)
                                                                  p_scale: 1/255, or a calibrated finer scale
                                                                  (float only; codes clamp at 255)
    (4) ctx = int8_bmm(P, v) -> out_dtype                         requantized as reference.int8_bmm

never writing the float score matrix: the kernel walks a block of query rows at a time. Nothing in (1)-(4) may
depend on the block size, the thread count or the instruction set, so the float softmax fixes what torch.softmax
leaves to the vector width:

* ``exp`` is :func:`exp_f32`: Cody-Waite range reduction and a degree-6 polynomial in Horner form, each step one
  fused multiply-add rounded once to float32 (:func:`fma_f32`; every x86 path the kernel has, AVX2 included, has the
  instruction, and the portable loop calls ``std::fma``; the compiler may fuse nothing else, ``-ffp-contract=off``);
  ``exp(x) = 0`` below ``EXP_FLUSH`` (where float32 would go subnormal), and for the mask value;
* the row sum is :func:`row_sum_16`: 16 running partial sums (column ``j`` into lane ``j mod 16``, in order of
  ``j``), then folded 8, 4, 2, 1 -- the same on an AVX2 machine (two 8-lane registers) and an AVX-512 one;
* ``P = nearbyint(e · float32(1/Σ) · float32(1/p_scale))`` clamped to [0, 255]: one reciprocal per row, then two
  float32 products (with ``p_scale = 1/255`` the second factor is exactly 255).
"""

from __future__ import annotations

import math

import torch

from .. import intonly
from .._checks import check_choice, check_tensor
from ..bert_attention import MASK_VALUE
from . import _validate, reference

__all__ = ["fma_f32", "exp_f32", "softmax_exps", "row_sum_16", "softmax_u8", "int8_attention", "EXP_FLUSH", "LANES"]

LANES = 16
EXP_FLUSH = -87.0  # exp below this is < 2^-125.5: flushed to 0 rather than rounded as a subnormal
_LOG2E = torch.tensor(1.4426950408889634, dtype=torch.float32)
_LN2_HI = torch.tensor(0.693145751953125, dtype=torch.float32)  # ln 2 in 15 significant bits: n·LN2_HI is exact
_LN2_LO = torch.tensor(1.428606765330187e-06, dtype=torch.float32)
_POLY = [torch.tensor(1.0 / math.factorial(i), dtype=torch.float32) for i in range(6, -1, -1)]  # Horner, x^6 first


def fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a·b + c`` for float32 values (float32 or float64 tensors holding them), rounded once to float32 (nearest,
    ties to even): what ``vfmadd`` and ``std::fma`` return, for results in float32's normal range.

    In float64 the product is exact (24 + 24 bits <= 53) but the sum is not, and rounding it to float64 and then to
    float32 rounds twice. That can only go wrong where the float64 sum lands exactly on a float32 tie the exact sum
    was not on (float32 ties are float64 numbers, so the first rounding never crosses one): there the exact error of
    the sum (TwoSum) moves it one float64 step toward the exact value, off the tie."""
    p = a.to(torch.float64) * b.to(torch.float64)  # exact
    c = c.to(torch.float64)
    s = p + c
    tie = (s.view(torch.int64) & 0x1FFFFFFF) == 0x10000000  # the 29 bits float32 drops are exactly one half
    if bool(tie.any()):
        p, c = torch.broadcast_tensors(p, c)
        pt, ct, st = p[tie], c[tie], s[tie]
        bb = st - pt
        err = (pt - (st - bb)) + (ct - bb)  # TwoSum: st + err == pt + ct exactly
        step = torch.where((err > 0) == (st > 0), 1, -1)  # away from zero when err has the sum's sign
        bits = st.view(torch.int64)
        s = s.clone()
        s[tie] = torch.where(err != 0, bits + step, bits).view(torch.float64)
    return s.to(torch.float32)


def exp_f32(x: torch.Tensor) -> torch.Tensor:
    """``exp`` of float32 ``x <= 0`` by the fixed recipe above (the kernel's scalar and vector code compute this)."""
    check_tensor("x", x)
    if x.dtype != torch.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    flush = ~(x >= EXP_FLUSH)  # also NaN-free -inf and the mask value
    xc = torch.where(flush, torch.zeros_like(x), x)
    n = torch.round(xc * _LOG2E)  # nearest, ties to even (nearbyint)
    # r = fma(-n, LN2_LO, fma(-n, LN2_HI, x)); n·LN2_HI is exact in float32 (|n| <= 126): the inner fma is x - n·LN2_HI
    r = fma_f32(-n, _LN2_LO, xc - n * _LN2_HI).to(torch.float64)  # float32 values, converted once
    p = _POLY[0]
    for c in _POLY[1:]:
        p = fma_f32(p, r, c)
    pow2 = ((n.to(torch.int32) + 127) << 23).view(torch.float32)  # 2^n from its exponent bits, n >= -126
    out = p * pow2
    return torch.where(flush, torch.zeros_like(out), out)


def row_sum_16(e: torch.Tensor) -> torch.Tensor:
    """The sum over the last dimension in the kernel's order: 16 lanes, then folded; returns ``[..., 1]``."""
    S = e.shape[-1]
    pad = (-S) % LANES
    if pad:
        e = torch.nn.functional.pad(e, (0, pad))  # + 0.0 changes no partial sum
    chunks = e.reshape(*e.shape[:-1], -1, LANES)
    lanes = torch.zeros_like(chunks[..., 0, :])
    for c in range(chunks.shape[-2]):
        lanes = lanes + chunks[..., c, :]
    width = LANES
    while width > 1:
        width //= 2
        lanes = lanes[..., :width] + lanes[..., width : 2 * width]
    return lanes


def softmax_exps(logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The unnormalised probabilities of step (3): ``exp_f32(logits - max)`` over the kept entries, 0 elsewhere."""
    check_tensor("logits", logits)
    if logits.dtype != torch.float32:
        raise TypeError(f"logits must be float32, got {logits.dtype}")
    keep = torch.ones_like(logits, dtype=torch.bool) if keep is None else torch.broadcast_to(keep, logits.shape)
    m = torch.where(keep, logits, float("-inf")).amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with nothing kept
    return torch.where(keep, exp_f32(torch.where(keep, logits - m, torch.zeros_like(logits))), torch.zeros_like(logits))


def softmax_u8(logits: torch.Tensor, keep: torch.Tensor | None = None, p_scale: float = 1.0 / 255.0) -> torch.Tensor:
    """Step (3), ``"float"``: float32 logits -> uint8 probability codes of scale ``p_scale`` along the last dimension
    (probabilities above ``255 · p_scale`` clamp at 255). ``keep``: bool, broadcast to ``logits`` (``False``: masked,
    probability exactly 0; a row with nothing kept is all zeros). The maximum is taken over the kept entries."""
    e = softmax_exps(logits, keep)
    total = row_sum_16(e)
    inv = torch.where(total > 0, 1.0 / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))
    p = torch.round((e * inv) * torch.tensor(1.0 / p_scale, dtype=torch.float32))
    return p.clamp(0, 255).to(torch.uint8)


def _keep(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else ~((bias <= MASK_VALUE) | torch.isnan(bias))


def int8_attention(q, k, v, q_scale: float, q_zero_point: int, k_scale: float, k_zero_point: int, v_scale: float,
                   v_zero_point: int, bias: torch.Tensor | None, out_scale: float, out_zero_point: int,
                   out_dtype: torch.dtype, softmax: str, requant: str, p_scale: float = 1.0 / 255.0) -> torch.Tensor:
    """Steps (1)-(4). ``bias``: ``None`` or float32 broadcastable to ``[..., T, S]``: the mask value (or -inf) masks a
    key (``qlab.bert_attention.additive_mask``); other values are added to the logits (``"float"`` only; ``"int"``
    takes 0 and the mask value alone). ``softmax``: ``"float"`` or ``"int"``. ``p_scale``: the scale of P's codes
    (``"int"``: 1/255 only)."""
    check_choice("softmax", softmax, ["float", "int"])
    _validate.scale_f32("p_scale", p_scale)
    if not math.isfinite(float(torch.tensor(1.0 / p_scale, dtype=torch.float32))):
        raise ValueError(f"p_scale = {p_scale} is too small: 1 / p_scale overflows float32")
    if softmax == "int" and float(torch.tensor(p_scale, dtype=torch.float32)) != float(
            torch.tensor(1.0 / 255.0, dtype=torch.float32)):
        raise ValueError(f"p_scale must be 1/255 with softmax='int' (the integer softmax makes codes of 1/255), got "
                         f"{p_scale}")
    if bias is not None:
        check_tensor("bias", bias)
        if bias.dtype != torch.float32:
            raise TypeError(f"bias must be float32 (qlab.bert_attention.additive_mask), got {bias.dtype}")
    if softmax == "float":
        logits = reference.int8_bmm(q, k, q_scale, q_zero_point, k_scale, k_zero_point, 1.0, 0, torch.float32, True,
                                    requant)
        if bias is not None:
            logits = logits + torch.where(_keep(bias), bias, torch.zeros_like(bias))  # a float bias, masked apart
        p = softmax_u8(logits, _keep(bias), p_scale)
    else:
        acc = reference.int8_bmm(q, k, q_scale, q_zero_point, k_scale, k_zero_point, 1.0, 0, torch.int32, True,
                                 requant)
        p = intonly.i_softmax(acc, float(q_scale) * float(k_scale), bias)
    return reference.int8_bmm(p, v, p_scale, 0, v_scale, v_zero_point, out_scale, out_zero_point, out_dtype,
                              False, requant)
