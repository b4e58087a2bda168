"""Showing library code and errors in a notebook, short and exact (every notebook).

* :func:`source` -- the real source of a qlab (or torch) function, optionally without its docstring, as
  ``inspect.getsource`` gives it: the notebooks print the code they talk about instead of copying it.
* :func:`rounded` -- a repr with long floats rounded: the digits that are the same on every CPU.
* :func:`expect_error` -- run a block that must fail, check it failed with the expected exception, and
  print the error in a few lines. Some errors carry pages of text (a dispatcher's list of every backend,
  an FX trace through ``torch.nn``); the lesson is in their first line and where they were raised.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import textwrap
import traceback

from ._checks import check_int

__all__ = ["source", "expect_error", "rounded"]


def source(obj, docstring: bool = False) -> str:
    """The source of ``obj`` (a function, method or class), dedented; without its docstring unless
    ``docstring``. The docstring is found by the parser, so the code's own lines and indentation are
    kept exactly."""
    text = textwrap.dedent(inspect.getsource(obj))
    if docstring:
        return text
    tree = ast.parse(text)
    node = tree.body[0]
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        lines = text.splitlines(keepends=True)
        start, end = body[0].lineno - 1, body[0].end_lineno  # the docstring's lines, 0-based [start, end)
        text = "".join(lines[:start] + lines[end:])
    return text


_LONG_FLOAT = re.compile(r"-?\d+\.\d{5,}(?:e[-+]?\d+)?")


def rounded(obj, digits: int = 4) -> str:
    """``repr(obj)`` (or ``obj`` if it is a string) with every float printed to more than four decimals rounded
    to ``digits`` significant digits: a converted model's scales carry float32 digits that differ between CPUs
    (the observers' histograms are summed by ISA-specific kernels), the first four do not."""
    check_int("digits", digits, 1)
    text = obj if isinstance(obj, str) else repr(obj)
    return _LONG_FLOAT.sub(lambda m: f"{float(m.group(0)):.{digits}g}", text)


class _Caught:
    exception: BaseException | None = None


@contextlib.contextmanager
def expect_error(expected: type[BaseException] | tuple[type[BaseException], ...], lines: int = 3):
    """``with expect_error(NotImplementedError): ...`` runs the block, requires it to raise ``expected``
    and prints ``Type: message`` (its first ``lines`` lines) and the innermost frame of the caller's own
    code. Any other exception, or none, fails loudly. The caught exception is kept in ``.exception``."""
    check_int("lines", lines, 1)
    caught = _Caught()
    try:
        yield caught
    except expected as exc:
        caught.exception = exc
        msg = str(exc).strip().splitlines() or [""]
        more = f" [... {len(msg) - lines} more lines]" if len(msg) > lines else ""
        print(f"{type(exc).__name__}: " + "\n".join(msg[:lines]) + more)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "site-packages" not in f.filename]
        if frames:
            f = frames[-1]
            print(f"  raised from: {f.line}")
    else:
        names = expected.__name__ if isinstance(expected, type) else " or ".join(e.__name__ for e in expected)
        raise AssertionError(f"the block was expected to raise {names}, and did not")
