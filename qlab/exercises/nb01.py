"""Exercises of ``notebooks/01-*.ipynb`` (quantization fundamentals); reference answers in
``notebooks/solutions/01-*.py``."""

from __future__ import annotations

import torch

from ..primitives import choose_qparams, quantize
from ._core import _call, exercise

__all__ = []


@exercise("01.1", "choose an affine uint8 scale and zero point for a range [lo, hi]")
def _check_01_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function my_qparams(lo, hi) -> (scale, zero_point)"]
    for lo, hi in [(-1.0, 3.0), (0.5, 3.0), (-7.3, -0.2), (-0.37, 2.9), (0.0, 1.0)]:
        got, err = _call(fn, lo, hi)
        if err:
            return [err]
        try:
            s, z = float(got[0]), float(got[1])
        except Exception:
            return [f"return a pair (scale, zero_point); for ({lo}, {hi}) you returned {got!r}"]
        ref_s, ref_z = (float(v) for v in choose_qparams(torch.tensor(lo), torch.tensor(hi)))
        wlo, whi = min(lo, 0.0), max(hi, 0.0)
        close = lambda a, b: abs(a - b) <= 1e-6 * abs(b)  # noqa: E731
        if z != int(z):
            return [f"the zero point must be an integer code (eq. 3 rounds it): for ({lo}, {hi}) you gave {z}"]
        if (lo > 0 or hi < 0) and close(s, (hi - lo) / 255):
            return [
                f"widen the range to contain 0 first (lo = min(lo, 0), hi = max(hi, 0)): for ({lo}, {hi}) "
                f"the scale should be {ref_s:.6g}, you gave {s:.6g}"
            ]
        if not 0 <= z <= 255:
            return [f"the zero point must lie in [0, 255]: for ({lo}, {hi}) you gave {int(z)}"]
        if close(s, (whi - wlo) / 256):
            return ["uint8 has 256 codes but 255 steps between them: divide by qmax - qmin = 255, not 256"]
        if not close(s, ref_s):
            return [f"the scale for ({lo}, {hi}) should be {ref_s:.6g} (eq. 3), you gave {s:.6g}"]
        if z != ref_z:
            return [
                f"the zero point for ({lo}, {hi}) should be {int(ref_z)} = 0 - round(lo / scale); with {int(z)} your "
                f"codes cover [{s * (0 - z):.4g}, {s * (255 - z):.4g}], not [{wlo:.4g}, {whi:.4g}]"
            ]
    return []


@exercise("01.2", "quantize a float tensor to uint8 codes with equation (2)")
def _check_01_2(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function my_quantize(x, scale, zero_point) -> uint8 tensor"]
    problems: list[str] = []
    x = torch.tensor([-3.0, -0.26, 0.0, 0.05, 0.15, 0.25, -0.05, 2.0, 40.0])
    scale, zp = 0.1, 10
    ref = quantize(x, scale, zp, torch.quint8)
    got, err = _call(fn, x.clone(), scale, zp)
    if err:
        return [err]
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        return [f"return a tensor of the input's shape {tuple(x.shape)}, got {type(got).__name__}"]
    got = got.to(torch.int64)
    ref = ref.to(torch.int64)
    if torch.equal(got, ref):
        return []
    unclamped = (torch.round(x / scale) + zp).to(torch.int64)
    if torch.equal(got, unclamped):
        problems.append(f"clamp to [0, 255]: {x[-1].item()} gives code {int(unclamped[-1])}, which uint8 cannot hold")
    elif torch.equal(got, torch.clamp(torch.floor(x / scale + 0.5) + zp, 0, 255).to(torch.int64)) or torch.equal(
        got, torch.clamp(torch.trunc(x / scale + torch.sign(x) * 0.5) + zp, 0, 255).to(torch.int64)
    ):
        ties = [i for i in range(len(x)) if got[i] != ref[i]]
        problems.append(
            f"round half to even (torch.round), not half up: {x[ties[0]].item()} / {scale} is a tie "
            f"and should give code {int(ref[ties[0]])}, you gave {int(got[ties[0]])}"
        )
    elif torch.equal(got, torch.clamp(torch.round(x / scale), 0, 255).to(torch.int64)):
        problems.append(f"add the zero point after rounding: 0.0 must map to code {zp}")
    elif torch.equal(got, torch.clamp(torch.round(x * scale) + zp, 0, 255).to(torch.int64)):
        problems.append("divide by the scale (or multiply by 1/scale), don't multiply by it")
    else:
        i = int((got != ref).nonzero()[0])
        problems.append(f"x = {x[i].item()} should give code {int(ref[i])}, you gave {int(got[i])}")
    return problems


@exercise("01.3", "which axis gets per-channel scales for a Conv2d weight [out, in, kh, kw]?")
def _check_01_3(axis) -> list[str]:
    if axis == 0:
        return []
    if axis == 1:
        return [
            "axis 1 is the input channel: each *output* channel is one dot product, so its weights share a "
            "scale (axis 0)"
        ]
    return [
        f"a Conv2d weight has shape [out, in, kh, kw]; answer with the axis of output channels (an int), got {axis!r}"
    ]
