"""Workshop exercises: each checker runs a learner's answer and says *what* is wrong.

Each teaching notebook ends with a few exercises. A learner writes an answer in
the notebook and calls ``qlab.exercises.check("01.1", answer)``; the result is a
:class:`Feedback` that prints one specific message per problem found (never just
"incorrect"). Reference solutions live in ``notebooks/solutions/`` (out of the
learner's way); ``tests/test_exercises.py`` runs every checker against its
reference solution and against typical wrong answers.
"""
from __future__ import annotations

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
        return None, f"your function raised {type(e).__name__}: {e} (called with {args})"


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
