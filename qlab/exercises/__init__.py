"""Workshop exercises: each checker runs a learner's answer and says *what* is wrong.

Each teaching notebook ends with a few exercises. A learner writes an answer in the notebook
and calls ``qlab.exercises.check("01.1", answer)``; the result is a :class:`Feedback` that prints
one specific message per problem found (never just "incorrect"). The checkers of notebook NN
live in ``qlab/exercises/nbNN.py``, beside their reference solutions in
``notebooks/solutions/NN-*.py`` (out of the learner's way); ``tests/test_exercises.py`` runs
every checker against its reference solution and against typical wrong answers.
"""

from __future__ import annotations

from . import nb01, nb02, nb03, nb04, nb05, nb06, nb07, nb08, nb09, nb10, nb11, nb12, nb13, nb14  # noqa: F401  (registers the checkers)
from ._core import Feedback, check, exercises, solution
from .nb03 import StubNet
from .nb05 import Head05, Net05, trace_cases_05
from .nb07 import SWEEP_CASES_07
from .nb08 import VIT_CALLS_08
from .nb10 import STATEMENTS_10

__all__ = [
    "Feedback",
    "check",
    "exercises",
    "solution",
    "StubNet",
    "Net05",
    "Head05",
    "trace_cases_05",
    "SWEEP_CASES_07",
    "VIT_CALLS_08",
    "STATEMENTS_10",
]
