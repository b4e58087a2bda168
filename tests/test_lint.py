"""Lint as a habit: the C++ sources follow .clang-format (ruff checks the Python in the test command itself)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("qlab/csrc/*.cpp"), *ROOT.glob("qlab/csrc/*.h"), *ROOT.glob("benchmarks/*.cpp")])


def _clang_format() -> str | None:
    here = pathlib.Path(sys.executable).parent / "clang-format"  # the pinned wheel in the venv
    return str(here) if here.exists() else shutil.which("clang-format")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cpp_follows_clang_format(path):
    exe = _clang_format()
    if exe is None:
        pytest.skip("clang-format is not installed (requirements/lock.txt pins it)")
    res = subprocess.run([exe, "--dry-run", "--Werror", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, f"run `clang-format -i {path.relative_to(ROOT)}`:\n{res.stderr[:2000]}"
