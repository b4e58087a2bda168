"""Exercises of ``notebooks/11-*.ipynb`` (accuracy debugging); reference answers in
``notebooks/solutions/11-*.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._env import scoped
from ._core import _call, _describe, exercise

__all__ = []


def _ranges(w: torch.Tensor, dim: int) -> torch.Tensor:
    w = w.abs().transpose(0, dim)
    return w.reshape(w.shape[0], -1).amax(1)


def _pairs_11_1():
    """(depthwise weight [C,1,3,3], pointwise weight [O,C,1,1]) cases; the second has a dead channel, the third
    as many outputs as inputs (so dim 0 and dim 1 of the pointwise weight have the same length)."""
    with scoped(seed=0):
        cases = []
        for c, o in ((6, 10), (5, 8), (4, 4)):
            w1 = torch.randn(c, 1, 3, 3) * torch.logspace(-2, 0, c).view(-1, 1, 1, 1)
            w2 = torch.randn(o, c, 1, 1)
            cases.append((w1, w2))
        cases[1][0][2] = 0.0
    return cases


@exercise("11.1", "cross-layer equalization scales s_i for a depthwise -> pointwise pair (equation (8))")
def _check_11_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function equalization_scales(w1, w2) -> a 1-D tensor s, one scale per channel"]
    for w1, w2 in _pairs_11_1():
        s, err = _call(fn, w1.clone(), w2.clone())
        c = w1.shape[0]
        if err and "must match the size" in err and w2.shape[0] != c:
            return [f"{err}; the channels between the layers are w1's {c} output channels and w2's {c} input "
                    "channels (w2's input channels are its dim 1, not its dim 0)"]
        if err:
            return [err]
        if not isinstance(s, torch.Tensor) or s.shape != (c,):
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else _describe(s)
            return [f"return one scale per channel between the layers: a tensor of shape ({c},) for w1 of shape "
                    f"{tuple(w1.shape)} and w2 of shape {tuple(w2.shape)}; got {shape} (w2's input channels are "
                    "its dim 1)"]
        r1, r2 = _ranges(w1, 0), _ranges(w2, 1)
        dead = (r1 == 0) | (r2 == 0)
        if not bool(torch.isfinite(s).all()) or bool((s[dead] != 1).any()) or bool((s <= 0).any()):
            return ["a channel whose weights are all zero has range 0: nothing to balance there, use s = 1 (your "
                    f"scales: {s.tolist()})"]
        live = ~dead
        after1, after2 = r1[live] / s[live], r2[live] * s[live]
        if torch.allclose(after1, after2, rtol=1e-4):
            continue
        if torch.allclose(after1, r2[live], rtol=1e-4) and torch.allclose(after2, r1[live], rtol=1e-4):
            return ["these scales swap the two ranges (r1/s = r2, r2·s = r1); equation (8) meets in the middle: "
                    "s = sqrt(r1·r2) / r2"]
        if torch.allclose(r1[live] * s[live], r2[live] / s[live], rtol=1e-4):
            return ["upside down: W1's output channel is *divided* by s and W2's input channel *multiplied*, so "
                    "s = sqrt(r1·r2) / r2, not its inverse"]
        r2_out = _ranges(w2, 0)
        if r2_out.shape == r1.shape and torch.allclose(r1[live] / s[live], r2_out[live] * s[live], rtol=1e-4):
            return ["you balanced w1 against w2's *output* channels (dim 0); the channel between the layers is "
                    "w2's input channel (w2's input channels are its dim 1)"]
        return [f"after scaling, the ranges of channel i must be equal (r1_i / s_i = r2_i · s_i); for w1 of shape "
                f"{tuple(w1.shape)} they are {after1[:3].tolist()} and {after2[:3].tolist()}"]
    return []


def _convs_11_2():
    with scoped(seed=1):
        return [
            (torch.nn.Conv2d(4, 6, 3, padding=1), torch.randn(3, 4, 9, 9)),
            (torch.nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), torch.randn(2, 6, 10, 10)),
            (torch.nn.Conv2d(5, 3, 1), torch.randn(4, 5, 6, 6)),
        ]


def _shift_11_2(conv, x, wq):
    with torch.no_grad():
        eps = wq - conv.weight
        return F.conv2d(x, eps, None, conv.stride, conv.padding, conv.dilation, conv.groups).mean((0, 2, 3))


def _quantized_11_2(w: torch.Tensor) -> torch.Tensor:
    scale = float(w.abs().max()) / 127.5
    return torch.fake_quantize_per_tensor_affine(w.detach(), scale, 0, -128, 127)


@exercise("11.2", "bias correction: the shift of each output channel's mean caused by quantized weights (10)")
def _check_11_2(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function output_shift(conv, x, w_quantized) -> one value per output channel"]
    for conv, x in _convs_11_2():
        wq = _quantized_11_2(conv.weight)
        want = _shift_11_2(conv, x, wq)
        with torch.no_grad():
            got, err = _call(fn, conv, x.clone(), wq.clone())
        case = (f"for Conv2d({conv.in_channels}, {conv.out_channels}, {conv.kernel_size[0]}, stride="
                f"{conv.stride[0]}, padding={conv.padding[0]}, groups={conv.groups})")
        if err:
            if conv.groups > 1:
                return [f"{case}: {err}; use the layer's own stride, padding, dilation and groups"]
            return [err]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else _describe(got)
            return [f"{case}: return one value per output channel, shape {tuple(want.shape)}; got {shape} (average "
                    "over the batch and both spatial dimensions)"]
        got = got.detach()
        if torch.allclose(got, want, atol=1e-5, rtol=1e-4):
            continue
        with torch.no_grad():
            mean_q = F.conv2d(x, wq, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups).mean((0, 2, 3))
        if torch.allclose(got, -want, atol=1e-5, rtol=1e-4):
            return [f"{case}: the sign is flipped: the shift is E[conv(x, W̃)] − E[conv(x, W)] (the bias then "
                    "subtracts it)"]
        if torch.allclose(got, mean_q, atol=1e-5, rtol=1e-4):
            return [f"{case}: that is the mean output of the quantized layer, not its shift: subtract the float "
                    "layer's mean output (equation (10): ε E[x])"]
        return [f"{case}: the shift per channel should start {want[:3].tolist()}, yours {got[:3].tolist()}; "
                "compute conv(x, W̃ − W) with the layer's stride, padding and groups (the padding's zeros change the "
                "mean at the borders) and average over batch, height and width"]
    return []


def _synthetic_steps_11_3():
    rows = [(10.0, 8.0, 12.0), (13.0, 11.5, 16.0), (17.0, 15.0, 19.0), (19.0, 18.0, 20.5)]  # (value, low, high)
    return [{"float_layers": [f"l{i}" for i in range(k)], "measures": {"sqnr_db": {"value": v, "low": lo, "high": hi}}}
            for k, (v, lo, hi) in enumerate(rows)]


def _reference_11_3(steps, budget):
    for k, s in enumerate(steps):
        if s["measures"]["sqnr_db"]["low"] >= budget:
            return k
    return None


@exercise("11.3", "the fewest float layers that meet an SQNR budget at the pessimistic end of the interval")
def _check_11_3(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function float_layers_for_budget(steps, budget) -> int or None"]
    from ..debug_figures import load_results

    recorded = load_results()["mixed"]["steps"]
    syn = _synthetic_steps_11_3()
    cases = [(syn, 12.0), (syn, 15.0), (syn, 25.0), (syn, 5.0)]  # each typical mistake fails on one of the first two
    lows = [s["measures"]["sqnr_db"]["low"] for s in recorded]
    cases += [(recorded, lows[0] - 1.0), (recorded, (lows[0] + max(lows)) / 2), (recorded, max(lows) + 5.0)]
    for steps, budget in cases:
        want = _reference_11_3(steps, budget)
        got, err = _call(fn, steps, budget)
        if err:
            return [err]
        if got == want and (got is None) == (want is None):
            continue
        where = "the recorded path" if steps is recorded else "a path with lows " + str(
            [s["measures"]["sqnr_db"]["low"] for s in steps])
        by_value = next((k for k, s in enumerate(steps) if s["measures"]["sqnr_db"]["value"] >= budget), None)
        by_high = next((k for k, s in enumerate(steps) if s["measures"]["sqnr_db"]["high"] >= budget), None)
        strict = next((k for k, s in enumerate(steps) if s["measures"]["sqnr_db"]["low"] > budget), None)
        if want is None:
            return [f"on {where}, budget {budget} dB: no step meets it; return None (got {got!r})"]
        if got == by_value and by_value != want:
            return [f"on {where}, budget {budget} dB: you compared the point estimate; a budget must hold at the "
                    "pessimistic end of the 95% interval (its low end), because four photos cannot pin the mean down"]
        if got == by_high and by_high != want:
            return [f"on {where}, budget {budget} dB: the high end is the optimistic one; use the low end"]
        if got == strict and strict != want:
            return [f"on {where}, budget {budget} dB: a low end exactly at the budget meets it (>=, not >)"]
        if isinstance(got, int) and got == want + 1:
            return [f"on {where}, budget {budget} dB: off by one: step k keeps k layers in float (step 0 is all "
                    "int8)"]
        return [f"on {where}, budget {budget} dB: the answer is {want} float layers, you gave {got!r}"]
    return []
