"""Every exercise checker accepts its reference solution and gives specific feedback on typical wrong answers."""
from __future__ import annotations

import pytest
import torch

from qlab import exercises

WRONG = {
    "01.1": [
        (lambda lo, hi: ((hi - lo) / 255, -lo / ((hi - lo) / 255)), "must be an integer code"),
        (lambda lo, hi: ((hi - lo) / 255, round(-lo / ((hi - lo) / 255))), "widen the range to contain 0"),
        (lambda lo, hi: ((max(hi, 0) - min(lo, 0)) / 256, 0), "divide by qmax - qmin = 255, not 256"),
        (lambda lo, hi: ((max(hi, 0) - min(lo, 0)) / 255, 0), "the zero point for"),
        (lambda lo, hi: 1 / 0, "raised ZeroDivisionError"),
        (lambda lo, hi: 0.1, "return a pair"),
    ],
    "01.2": [
        (lambda x, s, z: torch.round(x / s) + z, "clamp to [0, 255]"),
        (lambda x, s, z: torch.clamp(torch.floor(x / s + 0.5) + z, 0, 255), "round half to even"),
        (lambda x, s, z: torch.clamp(torch.round(x / s), 0, 255), "add the zero point"),
        (lambda x, s, z: torch.clamp(torch.round(x * s) + z, 0, 255), "divide by the scale"),
        (lambda x, s, z: [1, 2], "return a tensor"),
    ],
    "01.3": [(1, "axis 1 is the input channel"), ("out", "answer with the axis")],
    "09.1": [
        ((0.8 / 127.5, 0.8 / 255), "swapped"),
        ((0.8 / 127.5, 0.8 / 127.5), "falls back to affine"),
        ((0.8 / 255, 0.8 / 127), "not 127"),
        (0.5, "answer with a pair"),
    ],
    "09.2": [
        (lambda i: i, "that is the fake path"),
        (lambda i: (254 * i) // 255, "don't truncate"),
        (lambda i: round(i * 255 / 254), "the converted model outputs"),
    ],
}


@pytest.mark.parametrize("exercise", sorted(exercises.exercises()))
def test_reference_solution_passes(exercise):
    fb = exercises.check(exercise, exercises.solution(exercise))
    assert fb.ok, str(fb)
    assert str(fb).endswith("correct.")


@pytest.mark.parametrize("exercise", sorted(exercises.exercises()))
def test_every_exercise_has_wrong_answers_tested(exercise):
    assert WRONG.get(exercise), f"add typical wrong answers for {exercise} to WRONG"


@pytest.mark.parametrize("exercise, answer, message", [(e, a, m) for e, items in WRONG.items() for a, m in items])
def test_wrong_answers_get_specific_feedback(exercise, answer, message):
    fb = exercises.check(exercise, answer)
    assert not fb.ok
    assert message in str(fb), str(fb)


def test_unanswered_exercise_says_so():
    def todo(lo, hi):
        raise NotImplementedError

    assert "not answered yet" in str(exercises.check("01.1", todo))


def test_unknown_exercise_is_named():
    with pytest.raises(ValueError, match="exercise must be one of"):
        exercises.check("99.9", None)
