"""Exercises of ``notebooks/08-*.ipynb`` (ViT attention in int8); reference answers in
``notebooks/solutions/08-*.py``."""

from __future__ import annotations

import functools

import torch

from ._core import _call, _close, _describe, _letter_set, exercise

# the checkers register themselves with @exercise; the names below are what a notebook prints or uses
__all__ = ["VIT_CALLS_08"]

#: 08.1: steps of a ViT block applied to quantized tensors, by their call in ``qlab.support_matrix.PROBES``.
VIT_CALLS_08 = {
    "a": "x * 0.125 (scale q)",
    "b": "q @ k.transpose(-2, -1)",
    "c": "x.softmax(-1)",
    "d": "a + b",
    "e": "F.layer_norm",
    "f": "F.gelu",
    "g": "x.reshape(...)",
    "h": "x.transpose(-2, -1)",
    "i": "torch.cat([a, b])",
}


@functools.lru_cache(maxsize=1)
def _probes_08() -> dict[str, tuple[str, str]]:
    """Letter -> (category, detail) of ``support_matrix.probe_ops`` on that call: run on real quantized tensors."""
    from ..support_matrix import PROBES, probe_ops

    probes = [p for p in PROBES if p[0] in VIT_CALLS_08.values()]
    rows = {r.op: (r.category, r.detail) for r in probe_ops(probes)}
    return {letter: rows[call] for letter, call in VIT_CALLS_08.items()}


@exercise("08.1", "which steps of a ViT block fail on quantized tensors in eager mode")
def _check_08_1(answer) -> list[str]:
    from ..support_matrix import has_kernel

    letters = sorted(VIT_CALLS_08)
    got, problem = _letter_set(answer, letters, "the calls that fail")
    if problem:
        return [problem]
    problems = []
    for letter in letters:
        category, detail = _probes_08()[letter]
        call = VIT_CALLS_08[letter]
        if category == "fails" and letter not in got:
            op, _, rest = detail.partition(" -> ")
            reached = op.split(" (reached ")[-1].rstrip(")").split(", ")
            missing = [o for o in reached if not has_kernel(o)]
            why = f"{missing[-1]} has no QuantizedCPU kernel" if missing else "no quantized path"
            problems.append(f"missing {letter} ({call}): it fails, {why}: {rest}")
        elif category != "fails" and letter in got:
            op, _, rest = detail.partition(" -> ")
            how = (
                "its aten op has a QuantizedCPU kernel of its own"
                if category == "works: QuantizedCPU kernel"
                else "it has no QuantizedCPU kernel of its own, but its decomposition reaches "
                f"{rest.split(' -> ')[0]}, which does"
            )
            problems.append(f"not {letter} ({call}): it runs on quantized tensors: {how}")
    return problems


def _qmatmul_inputs_08():
    """Two quint8 operands shaped like attention's q and k^T (different scales and zero points) and output qparams."""
    g = torch.Generator().manual_seed(8)
    a = torch.quantize_per_tensor(torch.randn(2, 3, 17, 16, generator=g), 0.05, 128, torch.quint8)
    b = torch.quantize_per_tensor(torch.randn(2, 3, 16, 17, generator=g), 0.04, 100, torch.quint8)
    return a, b, 0.07, 120


@exercise("08.2", "quantized::matmul by hand, code for code")
def _check_08_2(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function qmatmul_by_hand(a, b, scale, zero_point) -> quint8 tensor"]
    a, b, scale, zp = _qmatmul_inputs_08()
    ref = torch.ops.quantized.matmul(a, b, scale, zp).int_repr()
    got, err = _call(fn, a, b, scale, zp)
    if err:
        return [err]
    if not isinstance(got, torch.Tensor) or got.shape != ref.shape:
        return [f"return a quint8 tensor of shape {tuple(ref.shape)}, got {_describe(got)}"]
    if got.is_quantized:
        if got.dtype != torch.quint8:
            return [f"return quint8 codes (as quantized::matmul does for quint8 inputs), got {got.dtype}"]
        if (got.q_scale(), got.q_zero_point()) != (scale, zp):
            return [
                f"the output carries its own qparams: quantize with scale={scale} and zero_point={zp} (the "
                f"arguments), not ({got.q_scale():g}, {got.q_zero_point()})"
            ]
        codes = got.int_repr()
    elif got.dtype == torch.uint8:
        codes = got  # the codes alone are fine too
    else:
        return [
            f"you returned a {got.dtype} tensor: quantized::matmul returns quint8 codes; quantize the float32 "
            f"product with the output's scale and zero point (torch.quantize_per_tensor(..., {scale}, {zp}, "
            "torch.quint8))"
        ]
    if torch.equal(codes, ref):
        return []
    ia, ib = a.int_repr().float(), b.int_repr().float()
    no_zp = torch.quantize_per_tensor((ia @ ib) * (a.q_scale() * b.q_scale()), scale, zp, torch.quint8).int_repr()
    product = a.dequantize() @ b.dequantize()
    trunc = torch.clamp(torch.trunc(product / scale) + zp, 0, 255).to(torch.uint8)
    floor = torch.clamp(torch.floor(product / scale) + zp, 0, 255).to(torch.uint8)
    n = int((codes != ref).sum())
    if torch.equal(codes, no_zp):
        return [
            "subtract each operand's zero point before multiplying: a ~ s_a (A - z_a), b ~ s_b (B - z_b) "
            f"(here z_a = {a.q_zero_point()}, z_b = {b.q_zero_point()}); dequantize() does it for you"
        ]
    if torch.equal(codes, trunc) or torch.equal(codes, floor):
        return [
            "round to the nearest code (half to even, as torch.quantize_per_tensor does), don't truncate: "
            f"{n} of {ref.numel()} codes are off by one"
        ]
    return [
        f"{n} of {ref.numel()} codes differ from quantized::matmul: it dequantizes both operands, multiplies in "
        "float32 and quantizes the product with the output's scale and zero point (section 5)"
    ]


def _requant_codes_08(m: float, s_q: float, s_k: float, s_o: float, head_dim: int):
    """The output codes of ``q·kᵀ·c`` (c = head_dim ** -0.5) two ways: requantized from the int32 accumulator
    with multiplier ``m``, and in float32 (dequantize, matmul, scale, quantize with s_o and zero point 128)."""
    g = torch.Generator().manual_seed(head_dim)
    q_codes = torch.randint(0, 256, (3, 9, head_dim), generator=g)  # uint8, zero point 128
    k_codes = torch.randint(-128, 128, (3, 9, head_dim), generator=g)  # int8, zero point 0
    acc = (q_codes - 128) @ k_codes.mT  # int32 accumulator (exact in int64)
    mine = torch.clamp(torch.round(m * acc.double()) + 128, 0, 255)
    logits = (s_q * (q_codes - 128).float()) @ (s_k * k_codes.float()).mT * head_dim**-0.5
    ref = torch.quantize_per_tensor(logits, s_o, 128, torch.quint8).int_repr().double()
    return mine, ref


@exercise("08.3", "the multiplier that requantizes an int8 q·kᵀ with the attention scale folded in")
def _check_08_3(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function requant_multiplier(s_q, s_k, s_o, head_dim) -> float"]
    for s_q, s_k, s_o, d in [(0.02, 0.05, 0.1, 16), (0.013, 0.031, 0.02, 64)]:
        got, err = _call(fn, s_q, s_k, s_o, d)
        if err:
            return [err]
        try:
            m = float(got)
        except Exception:
            return [f"return a number; for {(s_q, s_k, s_o, d)} you returned {got!r}"]
        # out = round(acc * M) + z_o must be quantize(s_q s_k acc * c, s_o, z_o) = round(s_q s_k c acc / s_o) + z_o
        ref = s_q * s_k * d**-0.5 / s_o
        if _close(m, ref, 1e-6):
            continue
        case = f"for s_q={s_q}, s_k={s_k}, s_o={s_o}, head_dim={d}"
        hints = [
            (
                s_q * s_k / s_o,
                "you left out the attention scale c = head_dim ** -0.5: with q's codes unscaled, the "
                "kernel's multiplier has to carry it",
            ),
            (
                s_q * s_k * d**0.5 / s_o,
                "c = head_dim ** -0.5: the logits are divided by sqrt(head_dim), not multiplied",
            ),
            (
                s_q * s_k / d / s_o,
                "c = head_dim ** -0.5 is one over the square root of head_dim, not one over head_dim",
            ),
            (
                s_q * s_k * d**-0.5,
                "that turns the accumulator into float logits (what fix 4 hands to the softmax); "
                "to requantize, divide by the output scale s_o as well",
            ),
            (s_q * s_k * d**-0.5 * s_o, "divide by the output scale, don't multiply: codes = value / s_o"),
            (1 / ref, "upside down: acc * s_q * s_k * c is the float value, and the code is that value / s_o"),
        ]
        hint = next((msg for value, msg in hints if _close(m, value, 1e-6)), None)
        if hint:
            return [f"{case}: {hint}"]
        mine, want = _requant_codes_08(m, s_q, s_k, s_o, d)
        n = int((mine != want).sum())
        return [
            f"{case}: with M = {m:.6g}, {n} of {want.numel()} output codes differ from quantizing "
            f"dequantize(q) @ dequantize(k)ᵀ · c with scale s_o; one multiplier must turn acc into value / s_o"
        ]
    return []
