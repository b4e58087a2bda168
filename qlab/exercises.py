"""Workshop exercises: each checker runs a learner's answer and says *what* is wrong.

Each teaching notebook ends with a few exercises. A learner writes an answer in
the notebook and calls ``qlab.exercises.check("01.1", answer)``; the result is a
:class:`Feedback` that prints one specific message per problem found (never just
"incorrect"). Reference solutions live in ``notebooks/solutions/`` (out of the
learner's way); ``tests/test_exercises.py`` runs every checker against its
reference solution and against typical wrong answers.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .primitives import choose_qparams, quantize

__all__ = ["Feedback", "check", "exercises", "solution"]

SOLUTIONS = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "solutions"


@dataclass
class Feedback:
    exercise: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"[{self.exercise}] correct."
        return f"[{self.exercise}] not yet:\n" + "\n".join(f"  - {p}" for p in self.problems)

    def _repr_pretty_(self, p, cycle):  # IPython shows the text, not the dataclass
        p.text(str(self))


@dataclass
class _Exercise:
    id: str
    title: str
    checker: Callable[[Any], list[str]]


_REGISTRY: dict[str, _Exercise] = {}


def _exercise(id: str, title: str):
    def register(fn):
        _REGISTRY[id] = _Exercise(id, title, fn)
        return fn

    return register


def exercises() -> dict[str, str]:
    """Exercise id -> title."""
    return {k: v.title for k, v in sorted(_REGISTRY.items())}


def check(exercise: str, answer) -> Feedback:
    """Run the checker of ``exercise`` (e.g. ``"01.1"``) on ``answer``."""
    if exercise not in _REGISTRY:
        raise ValueError(f"exercise must be one of {sorted(_REGISTRY)}, got {exercise!r}")
    try:
        problems = _REGISTRY[exercise].checker(answer)
    except NotImplementedError:
        problems = ["not answered yet: replace `raise NotImplementedError` with your code"]
    return Feedback(exercise, problems)


def solution(exercise: str):
    """Load the reference answer from ``notebooks/solutions/`` (for instructors and tests)."""
    if exercise not in _REGISTRY:
        raise ValueError(f"exercise must be one of {sorted(_REGISTRY)}, got {exercise!r}")
    nb = exercise.split(".")[0]
    files = sorted(SOLUTIONS.glob(f"{nb}-*.py"))
    if not files:
        raise FileNotFoundError(f"no solutions file for notebook {nb} in {SOLUTIONS}")
    spec = importlib.util.spec_from_file_location(f"qlab_solutions_{nb}", files[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SOLUTIONS[exercise]


def _call(fn, *args):
    """Call the learner's function; turn a crash into a message instead of a traceback."""
    try:
        return fn(*args), None
    except NotImplementedError:
        raise
    except Exception as e:  # the learner's bug is the feedback
        shown = ", ".join(f"tensor of shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else repr(a) for a in args)
        return None, f"your function raised {type(e).__name__}: {e} (called with ({shown}))"


# --------------------------------------------------------------------- notebook 01


@_exercise("01.1", "choose an affine uint8 scale and zero point for a range [lo, hi]")
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
            return [f"widen the range to contain 0 first (lo = min(lo, 0), hi = max(hi, 0)): for ({lo}, {hi}) "
                    f"the scale should be {ref_s:.6g}, you gave {s:.6g}"]
        if not 0 <= z <= 255:
            return [f"the zero point must lie in [0, 255]: for ({lo}, {hi}) you gave {int(z)}"]
        if close(s, (whi - wlo) / 256):
            return ["uint8 has 256 codes but 255 steps between them: divide by qmax - qmin = 255, not 256"]
        if not close(s, ref_s):
            return [f"the scale for ({lo}, {hi}) should be {ref_s:.6g} (eq. 3), you gave {s:.6g}"]
        if z != ref_z:
            return [f"the zero point for ({lo}, {hi}) should be {int(ref_z)} = 0 - round(lo / scale); with {int(z)} your "
                    f"codes cover [{s * (0 - z):.4g}, {s * (255 - z):.4g}], not [{wlo:.4g}, {whi:.4g}]"]
    return []


@_exercise("01.2", "quantize a float tensor to uint8 codes with equation (2)")
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
        problems.append(f"round half to even (torch.round), not half up: {x[ties[0]].item()} / {scale} is a tie "
                        f"and should give code {int(ref[ties[0]])}, you gave {int(got[ties[0]])}")
    elif torch.equal(got, torch.clamp(torch.round(x / scale), 0, 255).to(torch.int64)):
        problems.append(f"add the zero point after rounding: 0.0 must map to code {zp}")
    elif torch.equal(got, torch.clamp(torch.round(x * scale) + zp, 0, 255).to(torch.int64)):
        problems.append("divide by the scale (or multiply by 1/scale), don't multiply by it")
    else:
        i = int((got != ref).nonzero()[0])
        problems.append(f"x = {x[i].item()} should give code {int(ref[i])}, you gave {int(got[i])}")
    return problems


@_exercise("01.3", "which axis gets per-channel scales for a Conv2d weight [out, in, kh, kw]?")
def _check_01_3(axis) -> list[str]:
    if axis == 0:
        return []
    if axis == 1:
        return ["axis 1 is the input channel: each *output* channel is one dot product, so its weights share a scale (axis 0)"]
    return [f"a Conv2d weight has shape [out, in, kh, kw]; answer with the axis of output channels (an int), got {axis!r}"]




def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-12)


def _pair(answer, what: str):
    """``answer`` as a pair of floats, or ``(None, message)``."""
    try:
        a, b = answer
        return (float(a), float(b)), None
    except Exception:
        return (None, None), f"answer with a pair {what} of numbers, got {answer!r}"


# --------------------------------------------------------------------- notebook 02


def _activations_02_1() -> torch.Tensor:
    """A signed activation tensor [8, 4, 8, 8] (2048 values) with one outlier at each end."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, 8, 8, generator=g)
    x[0, 0, 0, 0], x[5, 2, 3, 1] = 25.0, -20.0
    return x


@_exercise("02.1", "the percentile range [Q(1 - p), Q(p)] of an activation tensor, equation (5)")
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
        n = len(s)

        def bracket(f):  # any interpolation between the two neighbouring order statistics is fine
            pos = f * (n - 1)
            return float(s[int(pos)]) - 1e-6, float(s[min(int(pos) + 1, n - 1)]) + 1e-6

        ok = lambda v, f: bracket(f)[0] <= v <= bracket(f)[1]  # noqa: E731
        if ok(lo, tail) and ok(hi, 1 - tail):
            continue
        if _close(lo, float(x.min())) and _close(hi, float(x.max())):
            return [f"that is MinMax's range [{x.min():.4g}, {x.max():.4g}]: the percentile range leaves out the "
                    f"lowest and highest {100 - p:.3g} % of the values -- here the outliers {x.max():.4g} and {x.min():.4g}"]
        if ok(lo, 1 - tail) and ok(hi, tail):
            return ["swapped: lo is the (100 - p)-th percentile (the small one), hi the p-th"]
        m = float(torch.quantile(flat.abs(), 1 - tail))
        if _close(hi, m, 1e-4) and _close(lo, -m, 1e-4):
            return [f"you took a percentile of |x| (a symmetric range, +-{m:.4g}); equation (5) takes the two ends "
                    f"separately: lo = Q({tail:.3g}) = {q(tail):.4g}, hi = Q({1 - tail:.3g}) = {q(1 - tail):.4g}"]
        if ok(hi, 1 - tail) and ok(lo, 1 - tail):
            return [f"lo is the (100 - p)-th percentile, Q({tail:.3g}) = {q(tail):.4g}, not the p-th"]
        if ok(hi, p / 10000) or ok(lo, p / 10000):
            return ["np.percentile takes a percentage (0-100), torch.quantile a fraction (0-1): you scaled p twice"]
        return [f"for p = {p} the range should be [Q({tail:.3g}), Q({1 - tail:.3g})] = [{q(tail):.4g}, {q(1 - tail):.4g}] "
                f"(torch.quantile of the flattened tensor), you gave [{lo:.4g}, {hi:.4g}]"]
    return []


OBSERVERS_02 = ("MinMax", "MovingAverage", "Histogram", "Percentile", "MSE")


@_exercise("02.2", "which observers does a 100x outlier in the *last* calibration batch wreck (> 20 dB lost)?")
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
        "MovingAverage": "in the last batch the outlier moves the moving average only c = 1 % of the way (equation (2)): "
                         "hi ~ 0.99 x 6.7 + 0.01 x 668 ~ 13, twice the range -- about one bit (6 dB), not 20 dB. "
                         "In the first batch (the explorer's case) it would set the range",
        "Histogram": "on these activations the histogram's search cuts the lone outlier off, wherever it arrives "
                     "(section 5: 47.3 -> 47.0 dB); on other data it need not, it has no explicit tail criterion",
        "Percentile": "the 99.99th percentile leaves out the top 0.01 % of the ~131 000 calibration values: one outlier "
                      "is far less than that",
    }
    wrecked = {"MinMax", "MSE"}
    problems = [f"missing {n}: {why[n]}" for n in OBSERVERS_02 if n in wrecked - got]
    problems += [f"not {n}: {why[n]}" for n in OBSERVERS_02 if n in got - wrecked]
    return problems


@_exercise("02.3", "MinMax and MovingAverage (c = 0.1) qparams after two batches")
def _check_02_3(answer) -> list[str]:
    if not isinstance(answer, dict) or set(answer) != {"MinMax", "MovingAverage"}:
        return [f"answer with a dict {{'MinMax': (scale, zero_point), 'MovingAverage': (scale, zero_point)}}, got {answer!r}"]
    (lo1, hi1), (lo2, hi2), c = (-1.0, 3.0), (-0.2, 7.0), 0.1

    def qp(lo, hi):
        s, z = choose_qparams(torch.tensor(lo), torch.tensor(hi))
        return float(s), int(z)

    ranges = {
        "MinMax": (min(lo1, lo2), max(hi1, hi2)),
        "MovingAverage": (lo1 + c * (lo2 - lo1), hi1 + c * (hi2 - hi1)),
    }
    wrong_ranges = {  # name -> [(range, what is wrong)]
        "MinMax": [((lo2, hi2), "MinMax keeps the minimum and maximum over *all* batches (equation (1)), not the last batch's"),
                   ((lo1, hi1), "MinMax keeps the minimum and maximum over *all* batches (equation (1)), not the first batch's")],
        "MovingAverage": [
            ((lo2 + c * (lo1 - lo2), hi2 + c * (hi1 - hi2)),
             "c weights the *new* batch: lo <- lo + c (min x - lo) moves only 10 % of the way towards batch 2"),
            (((lo1 + lo2) / 2, (hi1 + hi2) / 2), "that is the plain mean of the two batches; equation (2) with c = 0.1 "
                                                   "moves 10 % of the way from batch 1's range towards batch 2's"),
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


# --------------------------------------------------------------------- notebook 03


@_exercise("03.1", "the module groups fuse_modules should fuse in DigitsCNN")
def _check_03_1(groups) -> list[str]:
    from torch import nn

    from .models import DigitsCNN

    model = DigitsCNN()
    modules = dict(model.named_modules())
    shape = "a list of groups, each a list of module names, e.g. [['features.0', 'features.1', 'features.2'], ...]"
    if isinstance(groups, str) or not isinstance(groups, (list, tuple)) or not groups:
        return [f"answer with {shape}, got {groups!r}"]
    if all(isinstance(g, str) for g in groups):
        return [f"give one list per group, not one flat list of names: {shape}"]
    if not all(isinstance(g, (list, tuple)) and all(isinstance(n, str) for n in g) for g in groups):
        return [f"answer with {shape}, got {groups!r}"]
    kinds = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu"}
    problems: list[str] = []
    for g in groups:
        unknown = [n for n in g if n not in modules or n == ""]
        if unknown:
            problems.append(f"{g}: no module named {unknown[0]!r}; use the dotted names of model.named_modules(), "
                            "e.g. 'features.0'")
            continue
        types = [type(modules[n]) for n in g]
        other = [(n, t.__name__) for n, t in zip(g, types) if t not in kinds]
        if other:
            n, t = other[0]
            why = ("pooling runs on int8 tensors as it is and has nothing to fold" if "Pool" in t else
                   "fc is followed by the DeQuantStub, not a ReLU: there is nothing to fuse it with" if t == "Linear" else
                   "it is not part of a Conv-BN-ReLU block")
            problems.append(f"{g}: {n} is a {t}; {why}")
            continue
        tags = [kinds[t] for t in types]
        idx = [int(n.split(".")[-1]) for n in g]
        if sorted(tags) == sorted(["conv", "bn", "relu"]) and tags != ["conv", "bn", "relu"]:
            problems.append(f"{g}: list a group in data-flow order, conv, bn, relu (you have {', '.join(tags)})")
        elif tags == ["conv", "bn"] and idx == [idx[0], idx[0] + 1]:
            problems.append(f"{g}: fuse the ReLU too (features.{idx[0] + 2}): in the fused int8 conv it costs nothing, the "
                            "output is requantized with zero point 0 and clamped (section 2)")
        elif tags == ["conv", "bn", "relu"] and idx != [idx[0], idx[0] + 1, idx[0] + 2]:
            problems.append(f"{g}: a conv is fused with the BN and ReLU that directly follow it")
        elif tags != ["conv", "bn", "relu"]:
            problems.append(f"{g}: a group is [conv, bn, relu] (you have {', '.join(tags)})")
    if problems:
        return problems
    got = sorted(list(g) for g in groups)
    want = sorted(model.fuse_spec())
    if len(got) != len(set(map(tuple, got))):
        return ["each group once: you listed a group twice"]
    missing = [g for g in want if g not in got]
    if missing:
        return [f"missing {missing}: every one of the {len(want)} convolutions has its own BN and ReLU "
                "(count past the MaxPool2d layers features.6 and features.10)"]
    return []


REDUCE_RANGE_REASONS_03 = {
    "a": "8-bit activations would overflow the int32 accumulator of large layers",
    "b": "vpmaddubsw adds pairs of uint8 x int8 products into a saturating int16; 7-bit activations cannot overflow it",
    "c": "the zero point needs a spare bit",
    "d": "ReLU outputs are non-negative, so the eighth bit would be wasted",
}


@_exercise("03.2", "which engines' default qconfig uses reduce_range, and why")
def _check_03_2(answer) -> list[str]:
    import torch.ao.quantization as tq

    try:
        engines, reason = answer
        engines = {engines} if isinstance(engines, str) else set(engines)
    except Exception:
        return [f"answer with a pair (set of engine names, reason letter), e.g. ({{'qnnpack'}}, 'c'); got {answer!r}"]
    all_engines = [e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in torch.backends.quantized.supported_engines]
    unknown = engines - set(all_engines)
    if unknown:
        return [f"unknown engine(s) {sorted(unknown)}: choose from {all_engines}"]
    truth = {e for e in all_engines if tq.get_default_qconfig(e).activation().reduce_range}
    why = {
        "x86": "x86 picks FBGEMM or oneDNN kernels per layer, so its default keeps FBGEMM's safe 7-bit activations",
        "fbgemm": "fbgemm is the engine whose AVX2 kernels multiply with vpmaddubsw",
        "onednn": "onednn keeps codes 0..255: it counts on AVX-512 VNNI, whose vpdpbusd adds four products straight "
                  "into an int32 and cannot saturate",
        "qnnpack": "qnnpack (written for ARM) keeps codes 0..255: its kernels do not use vpmaddubsw",
    }
    problems = [f"missing {e}: {why[e]}" for e in all_engines if e in truth - engines]
    problems += [f"not {e}: {why[e]}" for e in all_engines if e in engines - truth]
    reason_why = {
        "a": "the int32 accumulator is wide enough; the narrow step is vpmaddubsw's int16 pair sum: "
             "2 x 255 x 127 = 64 770 > 32 767, while 7-bit codes give at most 2 x 127 x 128 = 32 512",
        "c": "an affine zero point is one of the codes 0..255 itself; it needs no extra bit",
        "d": "onednn and qnnpack see the same ReLUs and keep 8 bits, and the QuantStub's input is signed; "
             "the reason is an int16 overflow in the x86 kernels",
    }
    if reason not in REDUCE_RANGE_REASONS_03:
        problems.append(f"reason must be one of {sorted(REDUCE_RANGE_REASONS_03)}, got {reason!r}")
    elif reason != "b":
        problems.append(f"reason {reason!r}: {reason_why[reason]}")
    return problems


class StubNet(torch.nn.Module):
    """The model of exercise 03.3: ``forward`` is the learner's."""

    def __init__(self):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.relu = torch.nn.ReLU()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)
        self.dequant = DeQuantStub()


@_exercise("03.3", "place QuantStub and DeQuantStub in a model's forward")
def _check_03_3(forward) -> list[str]:
    import torch.ao.quantization as tq

    from .observers import MinMaxObserver, PerChannelMinMaxObserver

    if not callable(forward):
        return ["answer with a function forward(self, x) using self.quant, self.conv, self.relu, self.flatten, "
                "self.fc and self.dequant"]
    net_cls = type("Net", (StubNet,), {"forward": forward})
    with torch.random.fork_rng():  # leave the notebook's random state alone
        torch.manual_seed(0)
        model = net_cls().eval()
        x = torch.randn(4, 1, 8, 8)
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: calls.append(name))
             for name, m in model.named_children()]
    try:
        _, err = _call(model, x)
    finally:
        for h in hooks:
            h.remove()
    if err:
        return [err]
    names = ["quant", "conv", "relu", "flatten", "fc", "dequant"]
    missing = [n for n in names if n not in calls]
    twice = sorted({n for n in calls if calls.count(n) > 1})
    if "quant" in missing:
        return ["call self.quant(x) first: after convert it is the Quantize module that turns the float input into "
                "quint8; without it the int8 conv receives a float tensor"]
    if "dequant" in missing:
        return ["call self.dequant(...) on the logits: after convert the int8 Linear returns a quantized tensor, "
                "and DeQuantize turns it back into float"]
    if missing:
        return [f"use every module once: your forward never calls self.{missing[0]}"]
    if twice:
        return [f"call each module once: self.{twice[0]} ran {calls.count(twice[0])} times"]
    if calls[0] != "quant":
        return [f"self.quant must come before self.{calls[0]}: everything between the stubs runs in int8 after convert, "
                f"so self.{calls[0]} would get the float input"]
    if calls[-1] != "dequant":
        return [f"self.dequant must come last, after self.{calls[-1]}: after convert self.{calls[-1]} is an int8 module "
                "and would receive a float tensor"]
    if calls != names:
        return [f"keep the model's order conv, relu, flatten, fc between the stubs; your forward calls {calls}"]
    # the real eager flow on this forward: it must run and return float logits
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else engine
        model.qconfig = tq.QConfig(activation=MinMaxObserver.with_args(reduce_range=True),
                                   weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                             qscheme=torch.per_channel_symmetric))
        prepared = tq.prepare(model)
        prepared(x)
        int8 = tq.convert(prepared)
        out, err = _call(int8, x)
    finally:
        torch.backends.quantized.engine = engine
    if err:
        return [f"after prepare/convert your forward fails: between the stubs every tensor is quantized, and only "
                f"modules and ops with int8 kernels may touch it ({err})"]
    if out.is_quantized:
        return ["the converted model returns a quantized tensor: end with self.dequant"]
    return []


# --------------------------------------------------------------------- notebook 04


@_exercise("04.1", "the straight-through gradient of fake quantization, equation (2)")
def _check_04_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function ste_grad(x, scale, zero_point, quant_min, quant_max) -> tensor of 0/1"]
    cases = [
        (torch.tensor([-0.7, -0.56, -0.54, -0.2, 0.0, 0.33, 0.96, 1.04, 1.06, 3.0]), 0.1, 5, 0, 15),
        (torch.tensor([-4.3, -4.2, -3.0, 0.1, 3.4, 3.6, 3.8, 10.0]), 0.5, 0, -8, 7),
    ]
    for x, s, z, qmin, qmax in cases:
        xr = x.clone().requires_grad_()
        torch.fake_quantize_per_tensor_affine(xr, s, z, qmin, qmax).sum().backward()
        ref = xr.grad
        got, err = _call(fn, x.clone(), s, z, qmin, qmax)
        if err:
            return [err]
        try:
            got = torch.as_tensor(got).to(torch.float32).reshape(x.shape)
        except Exception:
            return [f"return one gradient per element of x (shape {tuple(x.shape)}), got {got!r}"]
        if torch.equal(got, ref):
            continue
        code = torch.round(x * (1.0 / s)) + z
        args = f"(scale {s}, zero point {z}, codes {qmin}..{qmax})"
        i = int((got != ref).nonzero()[0])
        xi, ci = x[i].item(), int(code[i])
        if bool((got == 1).all()):
            j = int((ref == 0).nonzero()[0])
            return [f"the gradient is 0 where the code was clamped: x = {x[j].item():g} gives code {int(code[j])}, "
                    f"outside {qmin}..{qmax} {args}, so nothing flows back to it"]
        if bool((got == 0).all()):
            return ["rounding's true gradient is 0 almost everywhere; the straight-through estimator treats it as the "
                    f"identity inside the range: x = {x[int(ref.nonzero()[0])].item():g} should get gradient 1"]
        lo, hi = s * (qmin - z), s * (qmax - z)
        if torch.equal(got, ((x >= lo) & (x <= hi)).float()):
            return [f"equation (2) tests the rounded code, not x against [{lo:g}, {hi:g}]: x = {xi:g} gives "
                    f"round({xi:g} / {s}) + {z} = {ci}, {'inside' if ref[i] else 'outside'} {qmin}..{qmax}, "
                    f"so its gradient is {int(ref[i])}"]
        if torch.equal(got, ((code > qmin) & (code < qmax)).float()):
            return [f"qmin and qmax are valid codes: x = {xi:g} gives code {ci}, not clamped, gradient 1"]
        nozp = torch.round(x * (1.0 / s))
        if torch.equal(got, ((nozp >= qmin) & (nozp <= qmax)).float()):
            return [f"add the zero point before comparing with the range: the code of x = {xi:g} is "
                    f"round(x / scale) + {z} = {ci}"]
        return [f"x = {xi:g} {args} gives code {ci}, so its gradient is {int(ref[i])}; you gave {got[i].item():g}"]
    return []


QAT_STATE_04 = ("weights", "bn_affine", "bn_running_stats", "activation_qparams", "weight_qparams")


@functools.lru_cache(maxsize=1)
def _frozen_qat_step() -> frozenset:
    """Which of QAT_STATE_04 change in a training step after disable_observer and freeze_bn_stats (a real step)."""
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.quantization as tq

    from .models import DigitsCNN

    engine = torch.backends.quantized.engine
    with torch.random.fork_rng():
        torch.manual_seed(0)
        try:
            torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else engine
            model = DigitsCNN(widths=(2, 2, 2, 2)).train()
            model = tq.fuse_modules_qat(model, model.fuse_spec())
            model.qconfig = tq.get_default_qat_qconfig("x86")
            model = tq.prepare_qat(model)
        finally:
            torch.backends.quantized.engine = engine
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))

        def step():  # plain SGD by hand (torch.optim's first use imports torch._dynamo: seconds)
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad

        step()  # observers on: the ranges are set
        model.apply(tq.disable_observer)
        model.apply(nniqat.freeze_bn_stats)
        block = model.features[0]

        def state():
            return {
                "weights": block.weight, "bn_affine": torch.cat([block.bn.weight, block.bn.bias]),
                "bn_running_stats": torch.cat([block.bn.running_mean, block.bn.running_var]),
                "activation_qparams": torch.cat([block.activation_post_process.scale,
                                                 block.activation_post_process.zero_point.float()]),
                "weight_qparams": torch.cat([block.weight_fake_quant.scale, block.weight_fake_quant.zero_point.float()]),
            }

        before = {k: v.detach().clone() for k, v in state().items()}
        step()
        return frozenset(k for k, v in state().items() if not torch.equal(v, before[k]))


@_exercise("04.2", "what still changes in a QAT step after disable_observer and freeze_bn_stats")
def _check_04_2(answer) -> list[str]:
    if answer is None or isinstance(answer, str) or not all(isinstance(a, str) for a in answer):
        return [f"answer with a set of names from {list(QAT_STATE_04)}, got {answer!r}"]
    got = set(answer)
    unknown = got - set(QAT_STATE_04)
    if unknown:
        return [f"unknown name(s) {sorted(unknown)}: use names from {list(QAT_STATE_04)}"]
    truth = _frozen_qat_step()
    why = {
        "weights": "the weights keep training: the point of the last steps is to train them against fixed qparams",
        "bn_affine": "freeze_bn_stats freezes BatchNorm's statistics only; its gamma and beta are parameters, "
                     "and the optimizer keeps training them",
        "bn_running_stats": "freeze_bn_stats makes BatchNorm normalise with its running mean and variance and stop "
                            "updating them",
        "activation_qparams": "disable_observer stops the moving-average update, so scale and zero point stay as they are",
        "weight_qparams": "model.apply(disable_observer) reaches every fake-quantize module, the weights' too: their "
                          "scales freeze while the weights keep training",
    }
    problems = [f"missing {k}: {why[k]}" for k in QAT_STATE_04 if k in truth - got]
    problems += [f"not {k}: {why[k]}" for k in QAT_STATE_04 if k in got - truth]
    return problems


@_exercise("04.3", "(scale, zero_point) of the default x86 QAT activation fake-quantizer after one batch in [-0.8, 1.8]")
def _check_04_3(answer) -> list[str]:
    import torch.ao.quantization as tq

    (s, z), bad = _pair(answer, "(scale, zero_point)")
    if bad:
        return [bad]
    fq = tq.get_default_qat_qconfig("x86").activation()
    fq(torch.tensor([-0.8, 0.3, 1.8]))
    ref_s, ref_z = float(fq.scale), int(fq.zero_point)
    lo, hi = -0.8, 1.8
    full_s = (hi - lo) / 255
    if _close(s, ref_s, 1e-4) and z == ref_z:
        return []
    if _close(s, full_s, 1e-4):
        return [f"reduce_range=True halves the custom range quant_min=0, quant_max=255 to codes "
                f"{fq.quant_min}..{fq.quant_max} (section 2): the scale is (hi - lo) / {fq.quant_max - fq.quant_min}"]
    if _close(s, (hi - lo) / 128, 1e-4):
        return [f"the codes are {fq.quant_min}..{fq.quant_max}: {fq.quant_max - fq.quant_min} steps between them, not 128"]
    if not _close(s, ref_s, 1e-4):
        return [f"the scale should be (hi - lo) / (qmax - qmin) = {ref_s:.6g}, you gave {s:.6g}"]
    return [f"the zero point is qmin - round(lo / scale) = {ref_z}, you gave {z:g}"]


# --------------------------------------------------------------------- notebook 09


@_exercise("09.1", "the weight scale the fused fake quant uses vs the one convert uses, for a symmetric qint8 range [0, 0.8]")
def _check_09_1(answer) -> list[str]:
    from .mismatch import fused_kernel_qparams

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
            problems.append("fake_scale: the fused kernel does not use the observer's symmetric formula when the range "
                            "does not straddle 0; it falls back to affine, (max - min) / (qmax - qmin)")
        else:
            problems.append(f"fake_scale should be {ref_fake:.6g}, you gave {fake_s:.6g}")
    if not close(conv_s, ref_conv):
        if close(conv_s, k / 127):
            problems.append("convert_scale: the observer divides max(|min|, max) by (qmax - qmin) / 2 = 127.5, not 127")
        else:
            problems.append(f"convert_scale should be {ref_conv:.6g} (the observer's calculate_qparams), you gave {conv_s:.6g}")
    return problems


@_exercise("09.2", "the converted model's output code for input code i (weight code 127, seed's scales)")
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
                return [f"for i={i} you gave {i}: that is the fake path, where the weight is exactly k; the converted "
                        f"weight is 127 * 2k/255 = 254k/255, so the code is round(254 i / 255) = {want}"]
            if got == (254 * i) // 255:
                return [f"round to nearest, don't truncate: for i={i}, 254 i / 255 = {254 * i / 255:.3f} rounds to {want}"]
            return [f"for i={i} the converted model outputs {want}, you gave {got}"]
    return []
