#!/usr/bin/env python
"""The instructor guide's measured tables, generated from the recordings so they cannot go stale.

    .venv/bin/python scripts/guide_tables.py           # rewrite the tables in docs/instructor-guide.md
    .venv/bin/python scripts/guide_tables.py --check   # exit 1 if a table differs from its recording

* ``timings``: each notebook's run-all time from ``notebooks/timings.json`` (written by ``make notebooks`` on the
  machine it names), beside the teaching plan below (an editorial suggestion, not a measurement).
* ``capacity``: the workshop hub's capacity and a class sizing from ``benchmarks/results/hub.json``
  (``benchmarks/bench_hub.py``), when that recording exists.

Each table sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the guide; ``tests/test_guide.py``
runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "instructor-guide.md"
TIMINGS = ROOT / "notebooks" / "timings.json"
HUB = ROOT / "benchmarks" / "results" / "hub.json"

# notebook number -> (time to plan for teaching it, what to know). Every notebook needs an entry.
PLAN = {
    "00": ("10 min", "environment check; fix what it flags before the workshop"),
    "01": ("45 min", "the math; exercises 01.1–01.3"),
    "02": ("40 min", "observer table, outlier explorer; exercises 02.1–02.3"),
    "03": ("40 min", "engine comparison (latency cell re-measures); exercises 03.1–03.3"),
    "04": ("30 min", "short fine-tune (seconds); exercises 04.1–04.3"),
    "05": ("30 min", "graph drawings, a tracing failure; exercises 05.1–05.3"),
    "06": ("40 min", "Inductor compiles; exercises 06.1–06.2"),
    "07": ("30 min", "plots recorded benchmark results, re-measures one model; exercises 07.1–07.3"),
    "08": ("45 min", "seed 000: support matrix, four fixes, attention maps; exercises 08.1–08.3"),
    "09": ("45 min", "seed 001: root cause, sources in LSBs; exercises 09.1–09.2"),
    "10": (
        "60 min",
        "a real pretrained transformer: profiles, outliers, the PT2E IndexError, SmoothQuant; exercises 10.1–10.3",
    ),
    "11": (
        "60 min",
        "a real pretrained CNN: the layer that hurts, mixed precision, CLE and bias correction; exercises 11.1–11.3",
    ),
    "12": (
        "45 min",
        "inside an int8 kernel: VNNI and AMX, the peak, prepacked weights, the GELU table, fused attention, "
        "integer-only; exercise 12.1",
    ),
    "13": ("60 min", "the capstone: a held-out model to int8 within a budget, faster than fp32"),
    "14": ("30 min", "ship the int8 model: strip, save, load elsewhere, an AOTInductor package; exercise 14.1"),
}


def timings_table() -> str:
    rec = json.loads(TIMINGS.read_text())
    m, seconds = rec["machine"], rec["seconds"]
    missing = sorted(nb for nb in seconds if nb[:2] not in PLAN)
    if missing:
        raise SystemExit(f"scripts/guide_tables.py: add a teaching plan for {missing} to PLAN")
    minutes = 0
    rows = ["| notebook | run all (measured) | plan to teach (suggestion) | notes |", "|---|---|---|---|"]
    for nb in sorted(seconds):
        plan, notes = PLAN[nb[:2]]
        minutes += int(plan.split()[0])
        rows.append(f"| `{nb.removesuffix('.ipynb')}` | {seconds[nb]:.0f} s | {plan} | {notes} |")
    rows.append(
        f"| **all {len(seconds)}** | **{sum(seconds.values()):.0f} s** | about {minutes / 60:.0f} h of "
        f"teaching, plus breaks | |"
    )
    head = (
        f"Measured by `make notebooks` on {m['cpu']} ({', '.join(m['isa'])}; {m['cores']} cores, torch "
        f"{m['torch']}), load average {rec.get('load_before')} before and {rec.get('load_after')} after:"
    )
    return head + "\n\n" + "\n".join(rows)


def capacity_tables() -> str | None:
    if not HUB.exists():
        return None
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_hub import capacity_table, sizing

    rec = json.loads(HUB.read_text())
    return capacity_table(rec) + "\n\n" + sizing(rec)


def render(text: str) -> str:
    for name, body in (("timings", timings_table()), ("capacity", capacity_tables())):
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"docs/instructor-guide.md has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
        if body is not None:
            text = pattern.sub(lambda mt, b=body: mt.group(1) + b + "\n" + mt.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the guide's tables differ from the recordings")
    args = ap.parse_args(argv)
    old = GUIDE.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("docs/instructor-guide.md is stale: run .venv/bin/python scripts/guide_tables.py")
            return 1
        return 0
    GUIDE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
