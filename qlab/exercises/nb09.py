"""Exercises of ``notebooks/09-*.ipynb`` (fake vs real); reference answers in ``notebooks/solutions/09-*.py``."""

from __future__ import annotations

import torch

from ..primitives import choose_qparams
from ._core import _call, exercise

__all__ = []


@exercise(
    "09.1", "the weight scale the fused fake quant uses vs the one convert uses, for a symmetric qint8 range [0, 0.8]"
)
def _check_09_1(answer) -> list[str]:
    from ..mismatch import fused_kernel_qparams

    try:
        fake_s, conv_s = (float(v) for v in answer)
    except Exception:
        return [f"answer with a pair (fake_scale, convert_scale) of floats, got {answer!r}"]
    k = 0.8
    ref_fake, _ = fused_kernel_qparams(0.0, k, -128, 127, True)
    ref_conv = float(choose_qparams(torch.tensor(0.0), torch.tensor(k), dtype=torch.qint8, symmetric=True)[0])
    close = lambda a, b: abs(a - b) <= 1e-6 * abs(b)  # noqa: E731
    problems = []
    if close(fake_s, ref_conv) and close(conv_s, ref_fake):
        return ["swapped: the fused kernel is the one that falls back to the affine formula"]
    if not close(fake_s, ref_fake):
        if close(fake_s, ref_conv):
            problems.append(
                "fake_scale: the fused kernel does not use the observer's symmetric formula when the range "
                "does not straddle 0; it falls back to affine, (max - min) / (qmax - qmin)"
            )
        else:
            problems.append(f"fake_scale should be {ref_fake:.6g}, you gave {fake_s:.6g}")
    if not close(conv_s, ref_conv):
        if close(conv_s, k / 127):
            problems.append("convert_scale: the observer divides max(|min|, max) by (qmax - qmin) / 2 = 127.5, not 127")
        else:
            problems.append(
                f"convert_scale should be {ref_conv:.6g} (the observer's calculate_qparams), you gave {conv_s:.6g}"
            )
    return problems


@exercise("09.2", "the converted model's output code for input code i (weight code 127, seed's scales)")
def _check_09_2(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function real_code(i) -> int"]
    for i in range(256):
        got, err = _call(fn, i)
        if err:
            return [err]
        want = round(254 * i / 255)  # acc = 127 i, multiplier (1/255)(2/255)/(1/255) = 2/255; never a tie
        try:
            got = int(got)
        except Exception:
            return [f"return an int code; for i={i} you returned {got!r}"]
        if got != want:
            if got == i:
                return [
                    f"for i={i} you gave {i}: that is the fake path, where the weight is exactly k; the converted "
                    f"weight is 127 * 2k/255 = 254k/255, so the code is round(254 i / 255) = {want}"
                ]
            if got == (254 * i) // 255:
                return [
                    f"round to nearest, don't truncate: for i={i}, 254 i / 255 = {254 * i / 255:.3f} rounds to {want}"
                ]
            return [f"for i={i} the converted model outputs {want}, you gave {got}"]
    return []
