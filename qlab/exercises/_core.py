"""The exercise registry and what every checker shares: running the learner's code, describing it,
reading multiple-choice answers. One module per notebook (``nb01`` ... ``nb09``) registers its checkers."""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._env import scoped

__all__ = ["Feedback", "check", "exercises", "solution", "exercise"]

SOLUTIONS = pathlib.Path(__file__).resolve().parents[2] / "notebooks" / "solutions"


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


def exercise(id: str, title: str):
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
        with scoped():  # a checker (and the learner's code it runs) never shifts the notebook's state
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
    if (
        answer is None
        or isinstance(answer, str)
        or not isinstance(answer, (set, frozenset, list, tuple))
        or not all(isinstance(a, str) for a in answer)
    ):
        return set(), f"answer with a set of letters from {letters} ({what}), got {answer!r}"
    unknown = set(answer) - set(letters)
    if unknown:
        return set(), f"unknown letter(s) {sorted(unknown)}: use letters from {letters}"
    return set(answer), None


def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-12)


def _pair(answer, what: str):
    """``answer`` as a pair of floats, or ``(None, message)``."""
    try:
        a, b = answer
        return (float(a), float(b)), None
    except Exception:
        return (None, None), f"answer with a pair {what} of numbers, got {answer!r}"
