"""The package's shape: small modules a learner reads in one sitting, each mapped to its notebook."""

from __future__ import annotations

import pathlib

import pytest

import qlab

QLAB = pathlib.Path(qlab.__file__).parent
MAX_LINES = 500


@pytest.mark.parametrize("path", sorted(QLAB.rglob("*.py")), ids=lambda p: str(p.relative_to(QLAB)))
def test_no_module_over_500_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(QLAB)} has {n} lines: split it along a seam (CONTRIBUTING.md)"


def test_the_package_docstring_maps_every_module():
    doc = qlab.__doc__
    for path in QLAB.glob("*.py"):
        if path.stem not in ("__init__", "_checks", "_env"):
            assert f":mod:`qlab.{path.stem}`" in doc, path.stem
    for pkg in (p for p in QLAB.iterdir() if (p / "__init__.py").exists() and p.name != "csrc"):
        assert f":mod:`qlab.{pkg.name}`" in doc, pkg.name


@pytest.mark.parametrize(
    "path",
    sorted(p for p in QLAB.rglob("*.py") if not p.name.startswith("_") or p.name == "__init__.py"),
    ids=lambda p: str(p.relative_to(QLAB)),
)
def test_every_public_module_says_what_it_exports(path):
    """``__all__`` is what the state check wraps and what a learner may rely on."""
    assert "\n__all__ = [" in path.read_text(), f"{path.relative_to(QLAB)} has no __all__"
