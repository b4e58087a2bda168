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
