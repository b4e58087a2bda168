"""Showing the support matrix of :mod:`qlab.support_matrix`: counts per category, a text filter, CSV/JSON
files, and the searchable table of ``notebooks/08-vit-attention-int8.ipynb`` (a Text filter redrawing
one display id, the table counterpart of :class:`qlab.widgets.LiveFigure`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
from typing import Iterable

import torch

from ._checks import check_choice
from .support_matrix import CATEGORIES, Row

__all__ = ["counts", "filter_rows", "to_html", "save", "load", "SupportTable"]


def counts(rows: Iterable[Row]) -> dict[str, int]:
    """Rows per category, in the order of :data:`CATEGORIES` (categories without rows omitted)."""
    rows = list(rows)
    return {c: n for c in CATEGORIES if (n := sum(r.category == c for r in rows))}


def filter_rows(rows: Iterable[Row], text: str = "", category: str | None = None) -> list[Row]:
    """Rows whose op, category or detail contains ``text`` (case-insensitive), optionally one category."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if category is not None:
        check_choice("category", category, CATEGORIES)
    needle = text.strip().lower()
    return [
        r
        for r in rows
        if (category is None or r.category == category)
        and (not needle or needle in r.op.lower() or needle in r.category.lower() or needle in r.detail.lower())
    ]


def to_html(rows: Iterable[Row], limit: int = 40) -> str:
    """An HTML table of at most ``limit`` rows, with a line saying how many matched."""
    import html

    rows = list(rows)
    shown = rows[:limit]
    head = "<tr>" + "".join(f"<th style='text-align:left'>{h}</th>" for h in ("op", "category", "detail")) + "</tr>"
    body = "".join(
        f"<tr><td style='text-align:left'><code>{html.escape(r.op)}</code></td><td style='text-align:left'>"
        f"{html.escape(r.category)}</td><td style='text-align:left'>{html.escape(r.detail)}</td></tr>"
        for r in shown
    )
    more = f" (first {limit} shown)" if len(rows) > limit else ""
    return f"<p>{len(rows)} matching rows{more}</p><table>{head}{body}</table>"


def _to_text(rows: list[Row], limit: int) -> str:
    lines = [f"{len(rows)} matching rows" + (f" (first {limit} shown)" if len(rows) > limit else "")]
    lines += [f"{r.op:40s} {r.category:28s} {r.detail}" for r in rows[:limit]]
    return "\n".join(lines)


def save(rows: Iterable[Row], path, fmt: str | None = None) -> pathlib.Path:
    """Write the rows to ``path`` as CSV or JSON (``fmt`` from the suffix unless given); return the path."""
    path = pathlib.Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    check_choice("fmt", fmt, ["csv", "json"])
    rows = [dataclasses.asdict(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__}
    if fmt == "json":
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["op", "category", "detail"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        path.write_text(buf.getvalue())
    return path


def load(path) -> list[Row]:
    """Read a file written by :func:`save`."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".json":
        return [Row(**r) for r in json.loads(path.read_text())["rows"]]
    with path.open(newline="") as f:
        return [Row(**r) for r in csv.DictReader(f)]


class SupportTable:
    """A Text filter (and a category dropdown) driving one HTML table through a display id,
    the table counterpart of :class:`qlab.widgets.LiveFigure`.

    >>> table = SupportTable(rows).show()
    >>> table.controls["text"].value = "bmm"      # redraws; table.result holds the matching rows
    """

    def __init__(self, rows: Iterable[Row], text: str = "", category: str | None = None, limit: int = 40):
        import ipywidgets as W

        self.rows = list(rows)
        self.limit = limit
        cats = [c for c in CATEGORIES if any(r.category == c for r in self.rows)]
        if category is not None:
            check_choice("category", category, cats)
        self.controls = {
            "text": W.Text(value=text, description="filter", placeholder="op name, category or detail"),
            "category": W.Dropdown(
                options=[("all", None)] + [(c, c) for c in cats], value=category, description="category"
            ),
        }
        self.result: list[Row] = []
        self.redraws = 0
        self._handle = None
        self.redraw()
        for w in self.controls.values():
            w.observe(lambda change: self.redraw(), names="value")

    def redraw(self) -> list[Row]:
        self.result = filter_rows(self.rows, self.controls["text"].value, self.controls["category"].value)
        self.redraws += 1
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)
        return self.result

    def _bundle(self) -> dict:
        return {"text/html": to_html(self.result, self.limit), "text/plain": _to_text(self.result, self.limit)}

    def show(self) -> "SupportTable":
        import ipywidgets as W
        from IPython.display import display

        display(W.HBox(list(self.controls.values())))
        self._handle = display(self._bundle(), raw=True, display_id=True)
        return self
