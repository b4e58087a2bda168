"""The instructor guide's measured tables match their recordings (scripts/guide_tables.py writes them)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_guide_tables_are_generated_from_the_recordings():
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "guide_tables.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_notebook_without_a_teaching_plan_is_refused(monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    import guide_tables

    monkeypatch.delitem(guide_tables.PLAN, "00")
    try:
        guide_tables.timings_table()
    except SystemExit as e:
        assert "add a teaching plan" in str(e)
    else:
        raise AssertionError("a notebook without a plan was accepted")
