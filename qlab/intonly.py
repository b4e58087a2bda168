"""Integer-only softmax, GELU and LayerNorm, after I-BERT (Kim et al., "I-BERT: Integer-only BERT Quantization",
ICML 2021): the reference the fused int8 attention kernel's integer softmax must equal bit for bit (issue 15).

A real value ``x`` is carried as an integer code ``q`` and a float scale ``S`` (``x = q·S``, no zero point). Every
operation below computes a new code from codes with integer arithmetic only; the scales are computed once, from
scales, and never touch the data. All codes are ``torch.int64`` tensors; divisions are floors.

(1) polynomial   a(x + b)² + c  =  S_out · q_out,   q_out = (q + ⌊b/S⌋)² + ⌊c / (aS²)⌋,   S_out = aS²
(2) exp, x ≤ 0   x = −z·ln2 + p,  p ∈ (−ln2, 0]:    z = ⌊−q / ⌊ln2/S⌋⌋,  q_p = q + z·⌊ln2/S⌋
                 exp(x) = 2^(−z) · exp(p) ≈ 2^(−z) · [0.3585 (p + 1.353)² + 0.344]  ->  q_exp = poly(q_p) >> z
(3) softmax      q̃ = q − max q;  P = ⌊(255·q_exp + Σ/2) / Σ⌋ with Σ = Σ_j q_exp,j: uint8 codes of scale 1/255
(4) erf          erf(x) ≈ sign(x)·[−0.2888 (min(|x|, 1.769) − 1.769)² + 1]   (0.096 off at x → 0⁺, where GELU
                 multiplies it by x/2)
(5) GELU         x/2 · [1 + erf(x/√2)]:  q_out = q · (q_erf + ⌊1/S_erf⌋),  S_out = S·S_erf / 2
(6) isqrt        Newton's iteration x ← ⌊(x + ⌊n/x⌋)/2⌋ from x₀ = 2^⌈bits(n)/2⌉, stopped when it stops decreasing
(7) LayerNorm    μ = ⌊Σq / C⌋, σ = isqrt(⌊Σ(q − μ)² / C⌋), out = ⌊(q − μ)·2^F / σ⌋: codes of scale 2^−F

The polynomial coefficients are the paper's; the errors they cost are measured in tests/test_intonly.py.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_int, check_positive_scale, check_tensor
from .bert_attention import MASK_VALUE

__all__ = ["i_poly", "i_exp", "check_sum_fits", "i_softmax", "i_erf", "i_gelu", "isqrt", "i_layernorm"]

EXP_COEFFS = (0.3585, 1.353, 0.344)  # exp(p) on (-ln2, 0]
ERF_COEFFS = (-0.2888, -1.769, 1.0)  # erf(x) on [0, 1.769]
CODE_LIMIT = 2**31  # |codes| below this: squares and sums of squares stay far from int64 overflow


def _codes(name: str, q) -> torch.Tensor:
    check_tensor(name, q)
    if q.dtype not in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"{name} must hold integer codes (int8/uint8/int16/int32/int64), got {q.dtype}")
    q = q.to(torch.int64)
    if q.numel() and int(q.abs().max()) >= CODE_LIMIT:
        raise ValueError(f"{name} must hold codes of magnitude below 2**31, got {int(q.abs().max())}")
    return q


def _scale(name: str, s) -> float:
    s = check_positive_scale(name, s)
    if isinstance(s, torch.Tensor):
        raise TypeError(f"{name} must be one float (per-tensor scale), got a tensor")
    return float(s)


def i_poly(q: torch.Tensor, scale: float, a: float, b: float, c: float) -> tuple[torch.Tensor, float]:
    """Equation (1): codes and scale of ``a(x + b)² + c`` for ``x = q·scale``, in integers."""
    q, s = _codes("q", q), _scale("scale", scale)
    if a == 0:
        raise ValueError("a must be non-zero (the output scale is a·scale²)")
    qb = math.floor(b / s)
    qc = math.floor(c / (a * s * s))
    return (q + qb) ** 2 + qc, a * s * s


def i_exp(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """Equation (2): ``exp(x)`` for ``x = q·scale ≤ 0``. Needs ``scale < ln 2`` (at least one code per halving)."""
    q, s = _codes("q", q), _scale("scale", scale)
    if s >= math.log(2):
        raise ValueError(f"scale must be below ln 2 = {math.log(2):.4f} for the integer exp, got {s}")
    if q.numel() and int(q.max()) > 0:
        raise ValueError("q must be <= 0: i_exp takes x - max(x) (softmax subtracts the row maximum first)")
    q_ln2 = math.floor(math.log(2) / s)
    z = torch.div(-q, q_ln2, rounding_mode="floor")
    qp = q + z * q_ln2
    ql, sl = i_poly(qp, s, *EXP_COEFFS)
    return ql >> z.clamp(max=62), sl


def check_sum_fits(scale: float, keys: int) -> None:
    """Equation (3) computes ``255 · e + Σe // 2`` in int64, and each ``e`` is at most ``qb² + qc`` (equation (1) at
    its vertex). A logit scale so small that ``256 · keys · (qb² + qc)`` reaches 2⁶³ would wrap: refuse it. (In float64,
    the order the C++ op checks it in, so both refuse the same scales; realistic scales are above 1e-5, the limit
    is near 1e-7 for a few hundred keys.)"""
    a, b, c = EXP_COEFFS
    qb, qc = math.floor(b / scale), math.floor(c / (a * scale * scale))
    if 256.0 * keys * (float(qb) * float(qb) + float(qc)) >= 2.0**63:
        raise ValueError(f"scale (the logits' scale, q_scale * k_scale) = {scale:.3g} is too small for the integer "
                         f"softmax over {keys} keys: 255 x the row's sum of integer exps would overflow int64")


def i_softmax(q: torch.Tensor, scale: float, bias: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Equation (3): softmax along ``dim`` as uint8 codes of scale 1/255 (the probabilities int8_bmm takes).

    ``bias``: the additive mask of ``qlab.bert_attention.additive_mask`` (0, or the most negative float32 / -inf),
    broadcast to ``q``; a
    masked position gets probability code 0, exactly. A row with every position masked is all zeros."""
    q, s = _codes("q", q), _scale("scale", scale)
    keep = torch.ones_like(q, dtype=torch.bool)
    if bias is not None:
        check_tensor("bias", bias)
        masked = (bias == MASK_VALUE) | (bias == float("-inf"))
        if not bool(((bias == 0) | masked).all()):
            raise ValueError(f"bias must hold only 0 (attend) and {MASK_VALUE:.4g} or -inf (masked), as "
                             "qlab.bert_attention.additive_mask makes: integer softmax cannot add other float biases")
        keep = torch.broadcast_to(~masked, q.shape)
    check_sum_fits(s, q.shape[dim] if q.dim() else 1)
    lowest = torch.iinfo(torch.int64).min
    qmax = torch.where(keep, q, lowest).amax(dim=dim, keepdim=True)
    qmax = torch.where(qmax == lowest, 0, qmax)  # fully masked rows
    e, _ = i_exp(torch.where(keep, q - qmax, 0), s)
    e = torch.where(keep, e, 0)
    total = e.sum(dim=dim, keepdim=True)
    p = torch.div(255 * e + total // 2, total.clamp(min=1), rounding_mode="floor")
    return p.clamp(0, 255).to(torch.uint8)


def i_erf(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """Equation (4): ``erf(x)`` for ``x = q·scale``; the output scale is negative (``a < 0``), as in the paper."""
    q, s = _codes("q", q), _scale("scale", scale)
    a, b, c = ERF_COEFFS
    clipped = q.abs().clamp(max=math.floor(-b / s))
    ql, sl = i_poly(clipped, s, a, b, c)
    return torch.sign(q) * ql, sl


def i_gelu(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """Equation (5): ``GELU(x) = x/2 · (1 + erf(x/√2))`` for ``x = q·scale``."""
    q, s = _codes("q", q), _scale("scale", scale)
    qe, se = i_erf(q, s / math.sqrt(2))
    one = math.floor(1 / se)
    return q * (qe + one), s * se / 2


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """Equation (6): ``⌊√n⌋`` of non-negative integers, by Newton's iteration in integers (``math.isqrt`` per
    element, vectorised)."""
    check_tensor("n", n)
    if n.dtype != torch.int64:
        raise TypeError(f"n must be an int64 tensor, got {n.dtype}")
    if n.numel() and int(n.min()) < 0:
        raise ValueError("n must be >= 0")
    bits = torch.where(n > 0, torch.floor(torch.log2(n.clamp(min=1).double())).long() + 1, 0)
    x = torch.where(n > 0, torch.ones_like(n) << ((bits + 1) // 2), 0)  # 2^⌈bits/2⌉ >= √n
    while True:
        nxt = torch.where(x > 0, (x + torch.div(n, x.clamp(min=1), rounding_mode="floor")) // 2, 0)
        if not bool((nxt < x).any()):
            return x
        x = torch.minimum(nxt, x)


def i_layernorm(q: torch.Tensor, frac_bits: int = 8) -> torch.Tensor:
    """Equation (7): ``(x − mean) / std`` over the last dimension, from codes only (the input scale cancels), as
    codes of scale ``2**-frac_bits``. The affine ``γ, β`` are applied by the caller (they fold into the next
    requantization). A row of equal values gives zeros."""
    q = _codes("q", q)
    check_int("frac_bits", frac_bits, 0, 16)
    C = q.shape[-1]
    if C < 1:
        raise ValueError("q's last dimension must not be empty")
    mu = torch.div(q.sum(-1, keepdim=True), C, rounding_mode="floor")
    d = q - mu
    var = torch.div((d * d).sum(-1, keepdim=True), C, rounding_mode="floor")
    sigma = isqrt(var)
    return torch.div(d << frac_bits, sigma.clamp(min=1), rounding_mode="floor") * (sigma > 0)
