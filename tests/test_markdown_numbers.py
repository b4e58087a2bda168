"""A measurement typed into a notebook's Markdown is a claim no cell checks: it goes stale the moment the code,
the library or the CPU changes. So the prose may not contain one: any decimal, or a number followed by a unit
(x, %, ms, s, M, MB, GB, dB, ...), fails unless it matches the short allowlist below, each entry with its
reason. Numbers belong in a code cell that computes (and asserts) them; prose refers to the printed figure.
Code spans and fenced code are code, not prose; link targets are addresses.
"""
from __future__ import annotations

import json
import pathlib
import re

import pytest

NB_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]-*.ipynb"))

CODE = re.compile(r"```.*?```|`[^`]*`", re.S)
LINKS = re.compile(r"\]\([^)]*\)|https?://\S+")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:\.\d+)*")
WITH_UNIT = re.compile(
    r"(?<![\w.])\d+(?:\.\d+)?\s?(?:×|x(?![a-zA-Z0-9])|%|\\%|ms\b|µs\b|s\b|M\b|MB\b|GB\b|KB\b|MiB\b|GiB\b|dB\b|GHz\b)"
)

#: (pattern, reason): what may look like a measurement but is not one.
ALLOWED = [
    (r"(?:PyTorch|torch|torchao|timm|Python|JupyterLab|transformers|tokenizers|onnxruntime|ONNX Runtime)"
     r"\s\d+(?:\.\d+)+", "a version number, pinned in requirements/lock.txt"),
    (r"\*\*\d\d\.\d\*\*", "an exercise number (notebook.exercise)"),
    (r"\d+\s?×\s?\d+(?:\s?×\s?\d+)*", "a shape or kernel size (16×16 pixels, a 3×3 convolution), not a measurement"),
]


def typed_numbers(markdown: str) -> list[str]:
    """The decimals and numbers-with-units in ``markdown`` that the allowlist does not explain."""
    text = LINKS.sub(" ", CODE.sub(" ", markdown))
    for pattern, _ in ALLOWED:
        text = re.sub(pattern, " ", text)
    found = [m.group(0) for m in DECIMAL.finditer(text)] + [m.group(0) for m in WITH_UNIT.finditer(text)]
    return sorted(set(found))


def test_the_rule_catches_measurements_and_spares_the_allowlist():
    for bad in ("3.25× faster", "22 M parameters", "it prints 128.99998", "took 90 s", "lost 2.6 dB", "within 25%",
                "1.43X", "a 4× gain"):
        assert typed_numbers(bad), bad
    for fine in ("torch 2.15 and torchao 0.18", "**07.2** Which", "a 3×3 conv on 16×16 images", "`scale=0.02`",
                 "equation (3) of section 8", "8-bit codes", "[a link](https://x.org/v1.2)", "```\nx = 0.5\n```"):
        assert not typed_numbers(fine), fine


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_measurement_is_typed_into_markdown(path):
    nb = json.loads(path.read_text())
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            found = typed_numbers("".join(cell["source"]))
            if found:
                problems.append(f"cell {i}: {found}")
    assert not problems, "numbers typed into Markdown (compute them in a code cell): " + "; ".join(problems)
