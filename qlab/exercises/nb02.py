"""Exercises of ``notebooks/02-*.ipynb`` (observers and calibration); reference answers in
``notebooks/solutions/02-*.py``."""

from __future__ import annotations

import torch

from ..primitives import choose_qparams
from ._core import _call, _close, _pair, exercise

__all__ = []


def _activations_02_1() -> torch.Tensor:
    """A signed activation tensor [8, 4, 8, 8] (2048 values) with one outlier at each end."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, 8, 8, generator=g)
    x[0, 0, 0, 0], x[5, 2, 3, 1] = 25.0, -20.0
    return x


@exercise("02.1", "the percentile range [Q(1 - p), Q(p)] of an activation tensor, equation (5)")
def _check_02_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function percentile_range(x, p) -> (lo, hi), p in percent (e.g. 99.9)"]
    x = _activations_02_1()
    flat = x.flatten()
    q = lambda f: float(torch.quantile(flat, f))  # noqa: E731
    for p in (99.9, 99.0):
        got, err = _call(fn, x.clone(), p)
        if err:
            if "q must be in the range [0, 1]" in err or "q values must be in the range [0, 1]" in err:
                return [f"torch.quantile takes a fraction in [0, 1], not a percentage: use p / 100 ({err})"]
            return [err]
        (lo, hi), bad = _pair(got, "(lo, hi)")
        if bad:
            return [bad]
        tail = 1 - p / 100
        s = flat.sort().values

        def ok(v, f, s=s):
            return _between_neighbours(v, s, f)

        if ok(lo, tail) and ok(hi, 1 - tail):
            continue
        if _close(lo, float(x.min())) and _close(hi, float(x.max())):
            return [
                f"that is MinMax's range [{x.min():.4g}, {x.max():.4g}]: the percentile range leaves out the "
                f"lowest and highest {100 - p:.3g} % of the values -- here the outliers {x.max():.4g} and {x.min():.4g}"
            ]
        if ok(lo, 1 - tail) and ok(hi, tail):
            return ["swapped: lo is the (100 - p)-th percentile (the small one), hi the p-th"]
        m = float(torch.quantile(flat.abs(), 1 - tail))
        if _close(hi, m, 1e-4) and _close(lo, -m, 1e-4):
            return [
                f"you took a percentile of |x| (a symmetric range, +-{m:.4g}); equation (5) takes the two ends "
                f"separately: lo = Q({tail:.3g}) = {q(tail):.4g}, hi = Q({1 - tail:.3g}) = {q(1 - tail):.4g}"
            ]
        if ok(hi, 1 - tail) and ok(lo, 1 - tail):
            return [f"lo is the (100 - p)-th percentile, Q({tail:.3g}) = {q(tail):.4g}, not the p-th"]
        if ok(hi, p / 10000) or ok(lo, p / 10000):
            return ["np.percentile takes a percentage (0-100), torch.quantile a fraction (0-1): you scaled p twice"]
        return [
            f"for p = {p} the range should be [Q({tail:.3g}), Q({1 - tail:.3g})] = [{q(tail):.4g}, {q(1 - tail):.4g}] "
            f"(torch.quantile of the flattened tensor), you gave [{lo:.4g}, {hi:.4g}]"
        ]
    return []


OBSERVERS_02 = ("MinMax", "MovingAverage", "Histogram", "Percentile", "MSE")


@exercise("02.2", "which observers does a 100x outlier in the *last* calibration batch wreck (> 20 dB lost)?")
def _check_02_2(answer) -> list[str]:
    if answer is None or isinstance(answer, str) or not all(isinstance(a, str) for a in answer):
        return [f"answer with a set of observer names from {list(OBSERVERS_02)}, got {answer!r}"]
    got = set(answer)
    unknown = got - set(OBSERVERS_02)
    if unknown:
        return [f"unknown observer name(s) {sorted(unknown)}: use names from {list(OBSERVERS_02)}"]
    why = {
        "MinMax": "MinMax keeps every value it has seen, wherever the outlier lands: its range grows 100x and its "
        "256 codes are spread over the empty space up to the outlier",
        "MSE": "MSE is wrecked too: its squared-error criterion weighs one value 100x beyond the rest more than the "
        "rounding error of everything else, so the MSE-optimal range keeps the outlier (section 5)",
        "MovingAverage": "in the last batch the outlier moves the moving average only c = 1 % of the way "
        "(equation (2)): "
        "hi ~ 0.99 x 6.7 + 0.01 x 668 ~ 13, twice the range -- about one bit (6 dB), not 20 dB. "
        "In the first batch (the explorer's case) it would set the range",
        "Histogram": "on these activations the histogram's search cuts the lone outlier off, wherever it arrives "
        "(section 5: 47.3 -> 47.0 dB); on other data it need not, it has no explicit tail criterion",
        "Percentile": "the 99.99th percentile leaves out the top 0.01 % of the ~131 000 calibration values: "
        "one outlier "
        "is far less than that",
    }
    wrecked = {"MinMax", "MSE"}
    problems = [f"missing {n}: {why[n]}" for n in OBSERVERS_02 if n in wrecked - got]
    problems += [f"not {n}: {why[n]}" for n in OBSERVERS_02 if n in got - wrecked]
    return problems


@exercise("02.3", "MinMax and MovingAverage (c = 0.1) qparams after two batches")
def _check_02_3(answer) -> list[str]:
    if not isinstance(answer, dict) or set(answer) != {"MinMax", "MovingAverage"}:
        return [
            f"answer with a dict {{'MinMax': (scale, zero_point), 'MovingAverage': (scale, zero_point)}}, got "
            f"{answer!r}"
        ]
    (lo1, hi1), (lo2, hi2), c = (-1.0, 3.0), (-0.2, 7.0), 0.1

    def qp(lo, hi):
        s, z = choose_qparams(torch.tensor(lo), torch.tensor(hi))
        return float(s), int(z)

    ranges = {
        "MinMax": (min(lo1, lo2), max(hi1, hi2)),
        "MovingAverage": (lo1 + c * (lo2 - lo1), hi1 + c * (hi2 - hi1)),
    }
    wrong_ranges = {  # name -> [(range, what is wrong)]
        "MinMax": [
            (
                (lo2, hi2),
                "MinMax keeps the minimum and maximum over *all* batches (equation (1)), not the last batch's",
            ),
            (
                (lo1, hi1),
                "MinMax keeps the minimum and maximum over *all* batches (equation (1)), not the first batch's",
            ),
        ],
        "MovingAverage": [
            (
                (lo2 + c * (lo1 - lo2), hi2 + c * (hi1 - hi2)),
                "c weights the *new* batch: lo <- lo + c (min x - lo) moves only 10 % of the way towards batch 2",
            ),
            (
                ((lo1 + lo2) / 2, (hi1 + hi2) / 2),
                "that is the plain mean of the two batches; equation (2) with c = 0.1 "
                "moves 10 % of the way from batch 1's range towards batch 2's",
            ),
            ((min(lo1, lo2), max(hi1, hi2)), "that is MinMax's range; the moving average follows equation (2)"),
            ((lo1, hi1), "the second batch counts too: lo <- lo + c (min x - lo), with c = 0.1"),
        ],
    }
    problems = []
    for name in ("MinMax", "MovingAverage"):
        (s, z), bad = _pair(answer[name], "(scale, zero_point)")
        if bad:
            problems.append(f"{name}: {bad}")
            continue
        lo, hi = ranges[name]
        ref_s, ref_z = qp(lo, hi)
        if _close(s, ref_s) and z == ref_z:
            continue
        hint = next((msg for (wl, wh), msg in wrong_ranges[name] if _close(s, qp(wl, wh)[0])), None)
        if hint:
            problems.append(f"{name}: {hint}; the range is [{lo:.4g}, {hi:.4g}]")
        elif _close(s, (hi - lo) / 256):
            problems.append(f"{name}: divide the range by qmax - qmin = 255, not 256")
        elif not _close(s, ref_s):
            problems.append(f"{name}: the range is [{lo:.4g}, {hi:.4g}], so the scale is {ref_s:.6g}; you gave {s:.6g}")
        elif z == -ref_z:
            problems.append(f"{name}: zero_point = qmin - round(lo / scale) = {ref_z}; you have the sign wrong")
        else:
            problems.append(f"{name}: the zero point is qmin - round(lo / scale) = {ref_z}, you gave {z:g}")
    return problems


def _between_neighbours(v: float, sorted_values, f: float) -> bool:
    """Whether ``v`` lies between the two order statistics around the fraction ``f`` (any interpolation is fine)."""
    n = len(sorted_values)
    pos = f * (n - 1)
    lo, hi = float(sorted_values[int(pos)]), float(sorted_values[min(int(pos) + 1, n - 1)])
    return lo - 1e-6 <= v <= hi + 1e-6
