"""Static checks on the committed notebooks: the conventions of CONTRIBUTING.md."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

NB_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    assert re.fullmatch(r"\d\d-[a-z0-9]+(-[a-z0-9]+)*\.ipynb", path.name), "name must be NN-kebab-title.ipynb"
    nb = json.loads(path.read_text())
    assert "widgets" not in nb["metadata"], "widget state in metadata: run scripts/execute_notebooks.py"
    assert nb["metadata"]["kernelspec"]["name"] == "qlab"
    cells = _code_cells(nb)
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), "not executed top to bottom in one fresh kernel"
    assert "qlab.setup(" in "".join(cells[0]["source"]), "the first code cell must call qlab.setup()"
    for i, c in enumerate(cells):
        src = "".join(c["source"])
        tags = c["metadata"].get("tags", [])
        errors = [o for o in c["outputs"] if o["output_type"] == "error"]
        assert bool(errors) == ("raises-exception" in tags), (
            f"cell {i}: error outputs and the raises-exception tag disagree"
        )
        if "NBVAL_IGNORE_OUTPUT" in src:
            assert "assert" in src, f"cell {i}: an output-ignored cell must assert what matters"


IGNORED_TABLE = re.compile(r"^\| (\d\d) \| (.+?) \|$", re.M)


def _ignored_cells() -> set[tuple[str, str]]:
    """``(notebook number, reason)`` of every cell whose output nbval ignores; the reason is the comment line
    under the marker, as ``# (reason)``."""
    found = set()
    for path in sorted(NB_DIR.glob("[0-9][0-9]-*.ipynb")):
        for i, c in enumerate(_code_cells(json.loads(path.read_text()))):
            lines = "".join(c["source"]).splitlines()
            if lines and lines[0].strip() == "# NBVAL_IGNORE_OUTPUT":
                reason = lines[1].strip() if len(lines) > 1 else ""
                where = f"{path.name} code cell {i}"
                assert re.fullmatch(r"# \(.+\)", reason), f"{where}: say why under the marker, as # (reason)"
                found.add((path.name[:2], reason[3:-1]))
            else:
                assert "NBVAL_IGNORE_OUTPUT" not in "".join(lines), f"{path.name} code cell {i}: the marker goes first"
    return found


def test_every_ignored_cell_is_listed_with_its_reason_in_contributing():
    listed = set(IGNORED_TABLE.findall((NB_DIR.parent / "CONTRIBUTING.md").read_text()))
    actual = _ignored_cells()
    missing, stale = sorted(actual - listed), sorted(listed - actual)
    assert not missing, f"ignored in a notebook but not listed in CONTRIBUTING.md: {missing}"
    assert not stale, f"listed in CONTRIBUTING.md but no such ignored cell: {stale}"


def test_all_notebooks_were_executed_on_one_machine():
    """`make notebooks` runs them all in one go: every notebook's setup cell prints the same CPU and ISA lines."""
    machines = {}
    for path in sorted(NB_DIR.glob("[0-9][0-9]-*.ipynb")):
        first = _code_cells(json.loads(path.read_text()))[0]
        text = "".join("".join(o.get("text", "")) for o in first["outputs"])
        lines = [ln for ln in text.splitlines() if ln.startswith(("CPU:", "ISA:"))]
        assert len(lines) == 2, f"{path.name}: the setup cell must print the CPU and ISA lines"
        machines.setdefault(tuple(lines), []).append(path.name[:2])
    assert len(machines) == 1, f"notebooks executed on different machines: {machines}"
