#!/usr/bin/env python
"""Execute workbook notebooks top to bottom in a fresh kernel and save them with outputs.

    .venv/bin/python scripts/execute_notebooks.py                # all notebooks
    .venv/bin/python scripts/execute_notebooks.py notebooks/01-*.ipynb

Runs in the notebooks/ folder with the workbook's kernel, strips the widget
state nbclient stores in the metadata (it would bloat the files and go stale),
and records each notebook's wall time in notebooks/timings.json (the instructor
guide quotes it), with the machine it ran on. Re-run all of them after a change of
machine: a test checks that every committed notebook was executed on the same one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"


def execute(path: pathlib.Path, kernel: str, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - t0
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python (qlab)", "language": "python"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=pathlib.Path)
    ap.add_argument("--kernel", default="qlab")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    args = ap.parse_args()
    paths = args.notebooks or sorted(NB_DIR.glob("[0-9][0-9]-*.ipynb"))
    timings_file = NB_DIR / "timings.json"
    sys.path.insert(0, str(ROOT))
    from qlab._env import machine_info
    from qlab.timing import loadavg

    old = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    machine = machine_info()
    same = old.get("machine", {}).get("cpu") == machine["cpu"] and old.get("machine", {}).get("isa") == machine["isa"]
    seconds = dict(old.get("seconds", {})) if same else {}
    if not same and len(paths) < len(sorted(NB_DIR.glob("[0-9][0-9]-*.ipynb"))):
        print("note: another machine than the recorded one; run all notebooks (make notebooks) before committing")
    load_before = loadavg()
    for p in paths:
        elapsed = execute(p.resolve(), args.kernel, args.timeout)
        seconds[p.name] = round(elapsed, 1)
        print(f"{p.name}: {elapsed:.1f} s", flush=True)
    seconds = {k: v for k, v in seconds.items() if (NB_DIR / k).exists()}  # a renamed or removed notebook drops out
    record = {"machine": {k: machine[k] for k in ("cpu", "isa", "cores", "torch")}, "load_before": load_before,
              "load_after": loadavg(), "seconds": dict(sorted(seconds.items()))}
    timings_file.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
