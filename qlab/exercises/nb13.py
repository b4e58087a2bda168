"""The capstone exercise of ``notebooks/13-capstone.ipynb``; the reference answer is in
``notebooks/solutions/13-capstone.py``. The measuring and the diagnosis live in :mod:`qlab.capstone`."""

from __future__ import annotations

from ._core import exercise

__all__ = []  # the checker registers itself with @exercise


@exercise("13.1", "quantize the held-out model to int8: within one point of fp32's accuracy and faster than fp32")
def _check_13_1(fn) -> list[str]:
    from ..capstone import assess

    if not callable(fn):
        return ["answer with a function quantize(model, calibration_batches, example_input) -> callable"]
    return assess(fn, "heldout").problems
