"""Workshop exercises: each checker runs a learner's answer and says *what* is wrong.

Each teaching notebook ends with a few exercises. A learner writes an answer in
the notebook and calls ``qlab.exercises.check("01.1", answer)``; the result is a
:class:`Feedback` that prints one specific message per problem found (never just
"incorrect"). Reference solutions live in ``notebooks/solutions/`` (out of the
learner's way); ``tests/test_exercises.py`` runs every checker against its
reference solution and against typical wrong answers.
"""
from __future__ import annotations

import contextlib
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


def _describe(a) -> str:
    """A short description of an argument for a message: shapes for tensors, class names for modules."""
    if isinstance(a, torch.Tensor):
        return f"tensor of shape {tuple(a.shape)}"
    if isinstance(a, torch.nn.Module):
        return f"a {type(a).__name__} module"
    if isinstance(a, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in a):
        inner = ", ".join(_describe(v) for v in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner})"
    return repr(a)


def _call(fn, *args):
    """Call the learner's function; turn a crash into a message instead of a traceback."""
    try:
        return fn(*args), None
    except NotImplementedError:
        raise
    except Exception as e:  # the learner's bug is the feedback
        shown = ", ".join(_describe(a) for a in args)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""  # PyTorch's errors can run to pages
        return None, f"your function raised {type(e).__name__}: {msg} (called with ({shown}))"


def _letter_set(answer, letters: list[str], what: str) -> tuple[set[str], str | None]:
    """A multiple-choice answer as a set of letters, or the message saying what is wrong with it."""
    if answer is None or isinstance(answer, str) or not isinstance(answer, (set, frozenset, list, tuple)) \
            or not all(isinstance(a, str) for a in answer):
        return set(), f"answer with a set of letters from {letters} ({what}), got {answer!r}"
    unknown = set(answer) - set(letters)
    if unknown:
        return set(), f"unknown letter(s) {sorted(unknown)}: use letters from {letters}"
    return set(answer), None


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


# --------------------------------------------------------------------- notebook 05


@contextlib.contextmanager
def _x86_engine():
    """Where checkers build, prepare and convert models: quantized engine x86 (weights are packed for the engine
    at convert), a fixed seed, and the notebook's random state and engine restored afterwards."""
    engine = torch.backends.quantized.engine
    with torch.random.fork_rng():
        torch.manual_seed(0)
        try:
            torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else engine
            yield
        finally:
            torch.backends.quantized.engine = engine


def _prepare_fx_x86(model: torch.nn.Module, mapping, example: torch.Tensor):
    """``prepare_fx`` on a copy of ``model`` with ``mapping`` and the x86 backend config, as notebook 05 does."""
    import copy

    # quantize_fx first: in torch 2.15 the backend_config module alone fails to import (notebook 05, section 3)
    from torch.ao.quantization.quantize_fx import prepare_fx
    from torch.ao.quantization.backend_config.x86 import get_x86_backend_config

    return prepare_fx(copy.deepcopy(model), mapping, (example,), backend_config=get_x86_backend_config())


class Net05(torch.nn.Module):
    """The model of exercise 05.1: conv-bn-relu, max-pool, conv-relu, global average pool, ``torch.flatten``, fc."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.gap(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


@functools.lru_cache(maxsize=1)
def _observers_05() -> tuple[int, int, int]:
    """``prepare_fx`` with the x86 defaults on :class:`Net05`: (observer calls, distinct observers,
    module calls that fusion removed)."""
    import torch.ao.quantization as tq

    from .fxviz import node_kinds

    with _x86_engine():
        model = Net05().eval()
        prepared = _prepare_fx_x86(model, tq.get_default_qconfig_mapping("x86"), torch.randn(2, 1, 8, 8))
    kinds = node_kinds(prepared)
    calls = [n for n, k in kinds.items() if k == "observer"]
    distinct = {id(prepared.get_submodule(n.target)) for n in calls}
    module_calls = lambda gm: sum(1 for n in gm.graph.nodes if n.op == "call_module")  # noqa: E731
    fused_away = module_calls(torch.fx.symbolic_trace(model)) - (module_calls(prepared) - len(calls))
    return len(calls), len(distinct), fused_away


@_exercise("05.1", "observer calls and distinct observers prepare_fx puts into a small CNN")
def _check_05_1(answer) -> list[str]:
    (calls, distinct), bad = _pair(answer, "(observer calls, distinct observers)")
    if bad:
        return [bad]
    ref_calls, ref_distinct, fused = _observers_05()
    problems = []
    if calls != ref_calls:
        if calls == ref_calls + fused:
            problems.append(f"calls: prepare_fx fuses before it observes: conv1+bn1+relu1 and conv2+relu2 each become one "
                            f"ConvReLU2d with one observer on its output, so {fused} of your observer calls do not exist")
        elif calls == ref_calls - 1:
            problems.append("calls: count the observer on the input x too: it gives the quantize at the model's entry its scale")
        elif calls == ref_distinct:
            problems.append("calls: that is the number of distinct observers; a shared observer is called once for every "
                            "tensor it watches (the pools' and flatten's outputs too)")
        else:
            problems.append(f"calls: one observer call on the input, one after each fused conv block, one after each op "
                            f"that shares its input's observer (pool, gap, torch.flatten), one after fc; you gave {calls:g}")
    if distinct != ref_distinct:
        if distinct == ref_calls or distinct == calls:
            problems.append("distinct: max-pool, adaptive average pool and torch.flatten share their input's observer "
                            "(OUTPUT_SHARE_OBSERVER_WITH_INPUT in the backend config, section 3): their calls reuse an "
                            "observer instead of adding one")
        elif distinct == ref_distinct + 1:
            problems.append("distinct: one observer too many: torch.flatten is in the x86 backend config (only the module "
                            "nn.Flatten was missing, section 3), so it shares its input's observer like the pools")
        elif distinct > ref_distinct:
            problems.append("distinct: the ops that share (max-pool, adaptive average pool, torch.flatten) add no observer "
                            "of their own; count the input, the fused conv blocks and fc")
        else:
            problems.append("distinct: the input, every fused conv block and fc each have an observer of their own")
    return problems


class Head05(torch.nn.Module):
    """The model of exercise 05.2: a conv block and a two-layer classifier head (``fc``, ``head``)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv, self.relu = nn.Conv2d(1, 4, 3), nn.ReLU()
        self.fc, self.relu2 = nn.Linear(4 * 6 * 6, 16), nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.flatten(self.relu(self.conv(x)), 1)
        return self.head(self.relu2(self.fc(x)))


@_exercise("05.2", "a QConfigMapping: x86 defaults, every linear layer left in float")
def _check_05_2(mapping) -> list[str]:
    import torch.ao.quantization as tq
    from torch.ao.quantization.quantize_fx import convert_fx

    from .fxviz import _is_quantized_module

    if not isinstance(mapping, tq.QConfigMapping):
        return [f"answer with a QConfigMapping (start from get_default_qconfig_mapping('x86')), got {mapping!r}"]
    with _x86_engine():
        model = Head05().eval()
        x = torch.randn(4, 1, 8, 8)
        try:
            prepared = _prepare_fx_x86(model, mapping, x)
            fused = {name: type(prepared.get_submodule(name)) for name in ("fc", "head")}  # before convert swaps them
            with torch.no_grad():
                prepared(x)
            converted = convert_fx(prepared)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return [f"prepare_fx/convert_fx fail with your mapping: {type(e).__name__}: {msg}"]
    int8 = {name: _is_quantized_module(converted.get_submodule(name)) for name in ("conv", "fc", "head")}
    if not int8["conv"]:
        if mapping.global_qconfig is None:
            return ["nothing is quantized, the conv neither: QConfigMapping() (or set_global(None)) has no global qconfig; "
                    "start from get_default_qconfig_mapping('x86') and take only the linear layers out"]
        return ["the conv must stay int8: leave only the linear layers in float"]
    by_type, by_name = mapping.object_type_qconfigs, mapping.module_name_qconfigs
    reasons: dict[str, list[str]] = {}  # why a layer is still int8 -> the layers
    for name in ("fc", "head"):
        if not int8[name]:
            continue
        kind = fused[name]
        if kind is not torch.nn.Linear and by_type.get(torch.nn.Linear, "unset") is None:
            full = f"{kind.__module__.split('.modules')[0]}.{kind.__name__}"
            why = (f"prepare_fx fused {name} with the ReLU after it into a {full} before it looked up the qconfigs "
                   f"(section 4), and set_object_type(nn.Linear, None) does not cover the fused type: also "
                   f"set_object_type({full}, None), or name the layers (set_module_name)")
        elif by_name and name not in by_name:
            why = (f"set_module_name matches one module by its name, and {name!r} is not among yours "
                   f"({sorted(by_name)})")
        elif by_type.get(torch.nn.functional.linear, "unset") is None:
            why = "set_object_type(F.linear, None) matches calls of the function F.linear; the model calls nn.Linear modules"
        else:
            why = "set the qconfig of each linear layer to None (set_object_type for its module type, or set_module_name)"
        reasons.setdefault(why, []).append(name)
    return [f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} still int8: {why}" for why, names in reasons.items()]


def _trace_a(self, x):
    if x.sum() > 0:
        x = -x
    return x


def _trace_b(self, x):
    for _ in range(3):
        x = torch.relu(x) + 1
    return x


def _trace_c(self, x):
    if self.training:
        x = x * 2
    return x


def _trace_d(self, x):
    if x.shape[0] > 1:
        x = x * 2
    return x


def _trace_e(self, x):
    return torch.where(x.sum() > 0, -x, x)


def _trace_f(self, x):
    return x / len(x)


def _trace_g(self, x):
    return x[:, : x.shape[1] // 2]


#: Exercise 05.3: forward methods; which of them can ``torch.fx.symbolic_trace`` record?
TRACE_CASES_05 = {"a": _trace_a, "b": _trace_b, "c": _trace_c, "d": _trace_d, "e": _trace_e, "f": _trace_f,
                  "g": _trace_g}


def trace_cases_05() -> str:
    """The forwards of exercise 05.3 as source text, one per letter (for the notebook)."""
    import inspect
    import textwrap

    out = []
    for letter, fwd in TRACE_CASES_05.items():
        body = textwrap.dedent("".join(inspect.getsource(fwd).splitlines(True)[1:]))
        out.append(f"({letter}) def forward(self, x):\n" + textwrap.indent(body, "        "))
    return "\n".join(out)


@functools.lru_cache(maxsize=1)
def _trace_results_05() -> dict[str, str]:
    """Letter -> the error ``symbolic_trace`` raises on that forward, or '' if it records it."""
    out = {}
    for letter, fwd in TRACE_CASES_05.items():
        module = type(f"Case_{letter}", (torch.nn.Module,), {"forward": fwd})()
        try:
            torch.fx.symbolic_trace(module)
            out[letter] = ""
        except Exception as e:
            out[letter] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return out


@_exercise("05.3", "which forwards symbolic tracing cannot record")
def _check_05_3(answer) -> list[str]:
    letters = sorted(TRACE_CASES_05)
    got, problem = _letter_set(answer, letters, "the forwards that fail")
    if problem:
        return [problem]
    truth = _trace_results_05()
    why = {
        "a": "x.sum() > 0 is a proxy with no value: `if` asks it for a bool",
        "b": "range(3) is a plain Python range: the loop runs three times during tracing and the graph holds three "
             "relu/add steps",
        "c": "self.training is an ordinary bool attribute of the module, not a proxy: tracing takes the branch it "
             "has now",
        "d": "symbolic_trace has no concrete shapes: x.shape[0] is a proxy too, and so is the comparison",
        "e": "torch.where is an ordinary op with a tensor condition: it is recorded (fix (b) of section 8)",
        "f": "len() must return a Python int, which a proxy cannot give (torch.fx.wrap('len') would record it as a call)",
        "g": "x.shape[1] // 2 is recorded as getattr, getitem and floordiv nodes and the slice uses the result; "
             "no bool or int is ever needed",
    }
    problems = []
    for letter in letters:
        fails = bool(truth[letter])
        if fails and letter not in got:
            problems.append(f"missing {letter}: it fails ({truth[letter]}): {why[letter]}")
        elif not fails and letter in got:
            problems.append(f"not {letter}: symbolic_trace records it: {why[letter]}")
    return problems


# --------------------------------------------------------------------- notebook 06


class Net06(torch.nn.Module):
    """The model of exercise 06.1: two Conv-BN-ReLU blocks, a global average pool and a linear classifier."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _data_06():
    """Net06 (seeded, eval, batch-norm statistics that are not the identity), two calibration batches of 8
    and a test batch of 5 (another batch size than the calibration's)."""
    with _x86_engine():
        model = Net06().eval()
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
        calibration = [torch.randn(8, 1, 8, 8) for _ in range(2)]
        x = torch.randn(5, 1, 8, 8)
    return model, calibration, x


@functools.lru_cache(maxsize=2)
def _reference_06(batches: int = 2):
    """``qlab.pt2e.pt2e_int8`` (export with a dynamic batch, X86InductorQuantizer, prepare_pt2e, calibrate,
    convert_pt2e) on the first ``batches`` calibration batches: (first activation (scale, zero point), outputs)."""
    from .pt2e import pt2e_int8

    model, calibration, x = _data_06()
    converted = pt2e_int8(model, calibration[:batches])
    with torch.no_grad():
        return _first_qparams_06(converted), converted(x)


def _first_qparams_06(gm) -> tuple[float, int] | None:
    """The (scale, zero point) of the first ``quantize_per_tensor`` in a converted graph (the input's)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target):
            return float(node.args[1]), int(node.args[2])
    return None


@_exercise("06.1", "PT2E post-training quantization in one function: export, annotate, prepare, calibrate, convert")
def _check_06_1(fn) -> list[str]:
    from collections import Counter

    from .fxviz import node_kinds

    if not callable(fn):
        return ["answer with a function ptq_pt2e(model, calibration) -> the GraphModule convert_pt2e returns"]
    model, calibration, x = _data_06()
    got, err = _call(fn, model, calibration)
    if err:
        if "ExportedProgram" in err:
            return [f"prepare_pt2e takes a GraphModule, not the ExportedProgram: pass torch.export.export(...).module() ({err})"]
        if "specialized it to be a constant" in err or "Constraints violated" in err:
            return ["export with an example batch of at least 2 rows (e.g. calibration[0]): with 1 row export "
                    f"specialises the batch dimension to 1 ({err})"]
        return [err]
    if isinstance(got, torch.export.ExportedProgram) or not isinstance(got, torch.fx.GraphModule):
        return [f"return the GraphModule that convert_pt2e returns, got {type(got).__name__}"]
    kinds = Counter(node_kinds(got).values())
    if kinds["observer"]:
        return [f"the graph still holds {kinds['observer']} observers: that is the prepared model; after calibrating, "
                "return convert_pt2e(prepared)"]
    if not kinds["quantize"]:
        return ["nothing was quantized: X86InductorQuantizer() annotates nothing until it has a config: "
                ".set_global(get_default_x86_inductor_quantization_config())"]
    try:
        with torch.no_grad():
            out = got(x)
    except Exception as e:
        err = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if "Guard failed" in err or "size()[0]" in err:
            return [f"your int8 graph only accepts the batch size it was exported with, not a batch of {x.shape[0]}: "
                    "declare dimension 0 dynamic, dynamic_shapes={'x': {0: torch.export.Dim('batch', max=1024)}} "
                    f"(section 1) ({err})"]
        return [f"calling your converted graph on a batch of {x.shape[0]} fails: {err}"]
    ref_qparams, ref_out = _reference_06(2)
    if isinstance(out, torch.Tensor) and out.shape == ref_out.shape and torch.equal(out, ref_out):
        return []
    qparams = _first_qparams_06(got)
    if qparams == (1.0, 0):
        return ["the observers saw no data (convert used their defaults, scale 1.0 and zero point 0): run every "
                "calibration batch through the prepared model before convert_pt2e"]
    if qparams == _reference_06(1)[0]:
        return ["calibrate on every batch: your input scale and zero point are those of calibration[0] alone"]
    if not isinstance(out, torch.Tensor) or out.shape != ref_out.shape:
        return [f"your graph returns {_describe(out)}, the model's logits have shape {tuple(ref_out.shape)}"]
    return [f"your int8 outputs differ from export -> prepare_pt2e(X86InductorQuantizer with the default config) -> "
            f"every calibration batch -> convert_pt2e by up to {float((out - ref_out).abs().max()):.3g}; the input's "
            f"(scale, zero point) is {qparams}, it should be {ref_qparams}"]


#: Exercise 06.2: statements about ``torch._inductor.config.freezing``, and why each is true or false.
FREEZING_06 = {
    "a": (True, "with freezing Inductor treats the weights as constants, so it can fold each int8 weight and its "
                "dequantize into a pre-packed oneDNN weight and fuse dequantize -> conv -> relu -> quantize into one "
                "int8 convolution (section 6)"),
    "b": (False, "convert_pt2e already fixed every scale and zero point: the converted graph has no observers left "
                 "to freeze"),
    "c": (False, "prepare_pt2e already folded each batch-norm into its convolution (section 2); freezing is a "
                 "compiler setting, not freeze_bn_stats"),
    "d": (True, "without freezing the weights stay graph inputs, the int8 patterns do not match, and the graph runs "
                "as float ops plus quantize/dequantize work (notebook 07, section 8, measures what that costs)"),
    "e": (False, "the quantizer annotated the graph at prepare_pt2e; torch.compile sees the finished q/dq graph and "
                 "freezing changes how Inductor lowers it, not what was quantized"),
}


@_exercise("06.2", "what torch._inductor.config.freezing does for a PT2E int8 model")
def _check_06_2(answer) -> list[str]:
    letters = sorted(FREEZING_06)
    got, problem = _letter_set(answer, letters, "the true statements")
    if problem:
        return [problem]
    problems = []
    for letter in letters:
        true, why = FREEZING_06[letter]
        if true and letter not in got:
            problems.append(f"missing {letter}: true, {why}")
        elif not true and letter in got:
            problems.append(f"not {letter}: {why}")
    return problems


# --------------------------------------------------------------------- notebook 07


def _int8_linear_tensors(n_in: int, n_out: int) -> dict[str, torch.Tensor]:
    """The tensors of an nn.Linear(n_in, n_out) quantized with the x86 defaults (eager convert, the same
    QuantizedLinear FX produces): int8 codes, per-channel scales and zero points, bias."""
    import torch.ao.quantization as tq

    with _x86_engine():
        model = torch.nn.Sequential(tq.QuantStub(), torch.nn.Linear(n_in, n_out), tq.DeQuantStub()).eval()
        model.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(model, inplace=True)
        with torch.no_grad():
            model(torch.randn(4, n_in))
        tq.convert(model, inplace=True)
    w, b = model[1].weight(), model[1].bias()
    return {"codes": w.int_repr(), "scales": w.q_per_channel_scales(), "zero_points": w.q_per_channel_zero_points(),
            "bias": b}


@_exercise("07.1", "bytes of the weight and bias tensors of an int8 nn.Linear(n_in, n_out)")
def _check_07_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function int8_linear_bytes(n_in, n_out) -> int"]
    for n_in, n_out in [(64, 10), (512, 1000), (3, 7)]:
        t = _int8_linear_tensors(n_in, n_out)
        ref = sum(v.numel() * v.element_size() for v in t.values())
        got, err = _call(fn, n_in, n_out)
        if err:
            return [err]
        try:
            got = float(got)
        except Exception:
            return [f"return a number of bytes; for ({n_in}, {n_out}) you returned {got!r}"]
        if got == ref:
            continue
        codes = n_in * n_out  # one byte per weight
        b = t["bias"].element_size()
        s, z = t["scales"].element_size(), t["zero_points"].element_size()
        case = f"for Linear({n_in}, {n_out})"
        hints = [
            (codes, "you counted only the int8 weight codes: the bias and one scale and one zero point per output "
                    "channel come on top"),
            (4 * n_out * (n_in + 1), "that is the fp32 size (4 bytes per weight and bias), not the int8 one"),
            (4 * n_in * n_out, "that is the fp32 weight, not the int8 one"),
            (codes + n_out * (b + 4 + 4), f"the per-channel scales are {t['scales'].dtype} and the zero points "
                                          f"{t['zero_points'].dtype}, {s} and {z} bytes each: look at "
                                          "weight().q_per_channel_scales().dtype"),
            (codes + n_out * b + s + z, "the weight is quantized per channel: one scale and one zero point per output "
                                        f"channel ({n_out} of each), not one for the whole tensor"),
            (codes + n_out * b + n_in * (s + z), "per-channel scales run along axis 0 of the weight [out, in], the "
                                                 f"output channels: {n_out} of them, not {n_in}"),
            (codes + n_out * (s + z), f"add the bias: a quantized Linear keeps it in {t['bias'].dtype} "
                                      f"({b} bytes per output)"),
            (codes + n_out * (1 + s + z), f"the bias is not quantized: it stays {t['bias'].dtype}, {b} bytes per output"),
        ]
        hint = next((msg for value, msg in hints if got == value), None)
        if hint:
            return [f"{case}: {hint}"]
        return [f"{case}: int8 codes {codes} B + bias {n_out} x {b} B + scales {n_out} x {s} B + zero points "
                f"{n_out} x {z} B; you gave {got:g}"]
    return []


#: 07.2: register widths in bits (AVX-VNNI: the VEX-encoded vpdpbusd of Alder Lake and later, on ymm registers).
_YMM_BITS = 256


@_exercise("07.2", "int8 multiply-adds per AVX-VNNI vpdpbusd on ymm, and the ratio to an fp32 FMA of the same width")
def _check_07_2(answer) -> list[str]:
    (macs, ratio), bad = _pair(answer, "(int8 multiply-adds per instruction, ratio to fp32)")
    if bad:
        return [bad]
    # vpdpbusd: per 32-bit lane, 4 u8 x s8 products added into the int32 accumulator -> one multiply-add per byte;
    # vfmadd231ps: one multiply-add per 32-bit float.
    ref_macs, fp32_macs = _YMM_BITS // 8, _YMM_BITS // 32
    problems = []
    if macs != ref_macs:
        if macs == 512 // 8:
            problems.append("64 is the zmm (512-bit) count of AVX-512 VNNI; AVX-VNNI works on 256-bit ymm registers")
        elif macs == _YMM_BITS // 32:
            problems.append(f"{_YMM_BITS // 32} is the number of int32 accumulators in a ymm register; vpdpbusd adds "
                            "four u8 x s8 products into each")
        elif abs(macs - (_YMM_BITS // 8) / 3) < 0.1:
            problems.append("that is AVX2's three-instruction sequence (vpmaddubsw + vpmaddwd + vpaddd); vpdpbusd does "
                            "the products and the accumulation in one instruction")
        else:
            problems.append(f"one multiply-add per byte of the register: {_YMM_BITS} bits / 8; you gave {macs:g}")
    if not _close(ratio, ref_macs / fp32_macs, 1e-3):
        if _close(ratio, ref_macs / (512 // 32), 1e-3) or _close(ratio, (512 // 8) / fp32_macs, 1e-3):
            problems.append("compare at the same width: the fp32 FMA on a ymm register (vfmadd231ps ymm) does "
                            f"{fp32_macs} multiply-adds")
        elif _close(ratio, macs / fp32_macs, 1e-3):
            pass  # follows from a wrong count, already explained
        else:
            problems.append(f"the ratio is int8 multiply-adds / fp32 multiply-adds per instruction, with "
                            f"vfmadd231ps ymm doing {_YMM_BITS} / 32 = {fp32_macs}; you gave {ratio:g}")
    return problems


#: 07.3: layers at batch 1, each a point of the recorded sweep (``benchmarks/results/models.json``).
SWEEP_CASES_07 = {
    "a": ("linear_width", 64, "a Linear(64, 64) head called on one row"),
    "b": ("linear_width", 1024, "a Linear(1024, 1024) called on one row"),
    "c": ("linear", 128, "a Linear(512, 512) of a transformer called on the 128 tokens of one image"),
    "d": ("conv", 4, "a Conv2d(64, 64, 3) on a 4x4 feature map"),
    "e": ("conv", 28, "a Conv2d(64, 64, 3) on a 28x28 feature map"),
    "f": ("linear_width", 256, "a Linear(256, 256) called on one row"),
}


def _sweep_07() -> dict[str, dict]:
    """Letter -> the recorded sweep row of that layer, with its crossover."""
    from .perf import crossover, load_results

    rows = load_results()["sweep"]
    out = {}
    for letter, (layer, x, _) in SWEEP_CASES_07.items():
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["x"])
        row = next((r for r in mine if r["x"] == x), None)
        if row is None:
            raise LookupError(f"the recorded sweep has no {layer} point at {x}: run benchmarks/bench_models.py")
        c = crossover([r["x"] for r in mine], [r["fp32_ms"] / r["int8_ms"] for r in mine])
        out[letter] = dict(row, speedup=row["fp32_ms"] / row["int8_ms"], crossover=c)
    return out


@_exercise("07.3", "which layers at batch 1 run faster in int8 (float in/out), by the recorded sweep")
def _check_07_3(answer) -> list[str]:
    letters = sorted(SWEEP_CASES_07)
    got, problem = _letter_set(answer, letters, "the layers int8 makes faster")
    if problem:
        return [problem]
    sweep = _sweep_07()
    problems = []
    for letter in letters:
        r = sweep[letter]
        what = SWEEP_CASES_07[letter][2]
        timed = f"recorded x{r['speedup']:.2f} (fp32 {r['fp32_ms'] * 1000:.0f} us, int8 {r['int8_ms'] * 1000:.0f} us)"
        wins = r["speedup"] > 1
        if wins and letter not in got:
            problems.append(f"missing {letter}, {what}: {timed}; its {r['macs']:,} multiply-adds repay the quantize "
                            "and dequantize at its boundaries")
        elif not wins and letter in got:
            where = f" (int8 wins from {r['crossover']} in this sweep)" if r["crossover"] is not None else ""
            problems.append(f"not {letter}, {what}: {timed}; {r['macs']:,} multiply-adds are too few to repay the fixed "
                            f"cost of quantizing the input and dequantizing the output{where}")
    return problems


# --------------------------------------------------------------------- notebook 08


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
    from .support_matrix import PROBES, probe_ops

    probes = [p for p in PROBES if p[0] in VIT_CALLS_08.values()]
    rows = {r.op: (r.category, r.detail) for r in probe_ops(probes)}
    return {letter: rows[call] for letter, call in VIT_CALLS_08.items()}


@_exercise("08.1", "which steps of a ViT block fail on quantized tensors in eager mode")
def _check_08_1(answer) -> list[str]:
    from .support_matrix import has_kernel

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
            how = ("its aten op has a QuantizedCPU kernel of its own" if category == "works: QuantizedCPU kernel"
                   else f"it has no QuantizedCPU kernel of its own, but its decomposition reaches {rest.split(' -> ')[0]}, "
                        "which does")
            problems.append(f"not {letter} ({call}): it runs on quantized tensors: {how}")
    return problems


def _qmatmul_inputs_08():
    """Two quint8 operands shaped like attention's q and k^T (different scales and zero points) and output qparams."""
    g = torch.Generator().manual_seed(8)
    a = torch.quantize_per_tensor(torch.randn(2, 3, 17, 16, generator=g), 0.05, 128, torch.quint8)
    b = torch.quantize_per_tensor(torch.randn(2, 3, 16, 17, generator=g), 0.04, 100, torch.quint8)
    return a, b, 0.07, 120


@_exercise("08.2", "quantized::matmul by hand, code for code")
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
            return [f"the output carries its own qparams: quantize with scale={scale} and zero_point={zp} (the "
                    f"arguments), not ({got.q_scale():g}, {got.q_zero_point()})"]
        codes = got.int_repr()
    elif got.dtype == torch.uint8:
        codes = got  # the codes alone are fine too
    else:
        return [f"you returned a {got.dtype} tensor: quantized::matmul returns quint8 codes; quantize the float32 "
                f"product with the output's scale and zero point (torch.quantize_per_tensor(..., {scale}, {zp}, "
                "torch.quint8))"]
    if torch.equal(codes, ref):
        return []
    ia, ib = a.int_repr().float(), b.int_repr().float()
    no_zp = torch.quantize_per_tensor((ia @ ib) * (a.q_scale() * b.q_scale()), scale, zp, torch.quint8).int_repr()
    product = a.dequantize() @ b.dequantize()
    trunc = torch.clamp(torch.trunc(product / scale) + zp, 0, 255).to(torch.uint8)
    floor = torch.clamp(torch.floor(product / scale) + zp, 0, 255).to(torch.uint8)
    n = int((codes != ref).sum())
    if torch.equal(codes, no_zp):
        return ["subtract each operand's zero point before multiplying: a ~ s_a (A - z_a), b ~ s_b (B - z_b) "
                f"(here z_a = {a.q_zero_point()}, z_b = {b.q_zero_point()}); dequantize() does it for you"]
    if torch.equal(codes, trunc) or torch.equal(codes, floor):
        return ["round to the nearest code (half to even, as torch.quantize_per_tensor does), don't truncate: "
                f"{n} of {ref.numel()} codes are off by one"]
    return [f"{n} of {ref.numel()} codes differ from quantized::matmul: it dequantizes both operands, multiplies in "
            "float32 and quantizes the product with the output's scale and zero point (section 5)"]


def _requant_codes_08(m: float, s_q: float, s_k: float, s_o: float, head_dim: int):
    """The output codes of ``q·kᵀ·c`` (c = head_dim ** -0.5) two ways: requantized from the int32 accumulator
    with multiplier ``m``, and in float32 (dequantize, matmul, scale, quantize with s_o and zero point 128)."""
    g = torch.Generator().manual_seed(head_dim)
    q_codes = torch.randint(0, 256, (3, 9, head_dim), generator=g)          # uint8, zero point 128
    k_codes = torch.randint(-128, 128, (3, 9, head_dim), generator=g)       # int8, zero point 0
    acc = (q_codes - 128) @ k_codes.mT                                       # int32 accumulator (exact in int64)
    mine = torch.clamp(torch.round(m * acc.double()) + 128, 0, 255)
    logits = (s_q * (q_codes - 128).float()) @ (s_k * k_codes.float()).mT * head_dim ** -0.5
    ref = torch.quantize_per_tensor(logits, s_o, 128, torch.quint8).int_repr().double()
    return mine, ref


@_exercise("08.3", "the multiplier that requantizes an int8 q·kᵀ with the attention scale folded in")
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
        ref = s_q * s_k * d ** -0.5 / s_o
        if _close(m, ref, 1e-6):
            continue
        case = f"for s_q={s_q}, s_k={s_k}, s_o={s_o}, head_dim={d}"
        hints = [
            (s_q * s_k / s_o, "you left out the attention scale c = head_dim ** -0.5: with q's codes unscaled, the "
                              "kernel's multiplier has to carry it"),
            (s_q * s_k * d ** 0.5 / s_o, "c = head_dim ** -0.5: the logits are divided by sqrt(head_dim), not multiplied"),
            (s_q * s_k / d / s_o, "c = head_dim ** -0.5 is one over the square root of head_dim, not one over head_dim"),
            (s_q * s_k * d ** -0.5, "that turns the accumulator into float logits (what fix 4 hands to the softmax); "
                                    "to requantize, divide by the output scale s_o as well"),
            (s_q * s_k * d ** -0.5 * s_o, "divide by the output scale, don't multiply: codes = value / s_o"),
            (1 / ref, "upside down: acc * s_q * s_k * c is the float value, and the code is that value / s_o"),
        ]
        hint = next((msg for value, msg in hints if _close(m, value, 1e-6)), None)
        if hint:
            return [f"{case}: {hint}"]
        mine, want = _requant_codes_08(m, s_q, s_k, s_o, d)
        n = int((mine != want).sum())
        return [f"{case}: with M = {m:.6g}, {n} of {want.numel()} output codes differ from quantizing "
                f"dequantize(q) @ dequantize(k)ᵀ · c with scale s_o; one multiplier must turn acc into value / s_o"]
    return []


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
