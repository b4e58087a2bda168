#!/usr/bin/env python
"""What limits an AMX int8 linear: tile products alone, and with the AVX-512 epilogue (``amx_tiles.cpp``).

    .venv/bin/python benchmarks/bench_amx_tiles.py      # -> benchmarks/results/amx-tiles.json (AMX CPUs only)

Compiles ``benchmarks/amx_tiles.cpp`` (g++, no torch) and runs it on ViT-B's four linears at 197 tokens, one thread:
qlab's AMX loop for a prepacked weight reduced to its bones, in variants timed in turns every round: the old 16 x 48
block and the 32 x 32 block qlab runs now (A read in place or copied into tile order), the products and tile stores
alone, plus finishing each block at once, plus finishing it spread over the next block's k steps; and the finishing
alone (see the comment at the top of ``amx_tiles.cpp``). Reports medians, IQRs, G multiply-adds/s on the 197 real
rows, and the share of the AMX peak that ``qlab.roofline.peak_gmacs("amx")`` probes on registers in the same
process. Refuses to record when the 1-minute
load average is above 0.5 (waits ``--wait`` s); records the machine and load.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qlab  # noqa: E402
import qlab.kernels as qk  # noqa: E402
from qlab import _env, roofline  # noqa: E402
from qlab.timing import wait_for_quiet, write_recording  # noqa: E402

VARIANTS = ("tiles_16x48", "finish_16x48", "tiles_32x32", "tiles_32x32_a_tiles", "finish_32x32", "finish_32x32_spread",
            "finish_alone")


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--wait", type=float, default=600)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "amx-tiles.json")
    args = ap.parse_args(argv)
    if args.rounds < 15:
        ap.error("--rounds must be at least 15 (the interquartile range needs them)")
    if "amx_int8" not in _env.cpu_flags():
        print("this CPU has no AMX-INT8: nothing to measure")
        return 0
    qlab.setup(threads=1, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        exe = pathlib.Path(tmp) / "amx_tiles"
        subprocess.run(["g++", "-O2", "-std=c++17", str(ROOT / "benchmarks" / "amx_tiles.cpp"), "-o", str(exe)],
                       check=True)
        meta = _env.machine_info() | {
            "qlab_kernels": f"{qk.backend()} ({qk.isa()})",
            "loadavg_before": wait_for_quiet(0.5, args.wait),
            "command": "python benchmarks/bench_amx_tiles.py " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        t0 = time.perf_counter()
        peak = roofline.peak_gmacs("amx") if "amx" in qk.available_isas() else None
        meta["peak_gmacs_per_core"] = None if peak is None else round(peak, 1)
        results = {}
        for name, (k, n) in roofline.VIT_B_LINEARS.items():
            res = subprocess.run([str(exe), str(args.tokens), str(k), str(n), str(args.rounds)], check=True,
                                 capture_output=True, text=True)
            raw = json.loads(res.stdout)
            macs = args.tokens * k * n
            row = {"shape": f"{args.tokens}x{k}x{n}", "rows_computed": raw["rows_computed"]}
            for v in VARIANTS:
                q25, med, q75 = quartiles(raw[v])
                row[v] = {"median_ms": round(med, 4), "q25_ms": round(q25, 4), "q75_ms": round(q75, 4)}
                if v != "finish_alone":
                    row[v]["gmacs"] = round(macs / med / 1e6, 1)
                    if peak:
                        row[v]["pct_peak"] = round(100 * macs / med / 1e6 / peak, 1)
            results[name] = row
            print(f"{name:4s} {row['shape']:12s} " + ", ".join(
                f"{v} {row[v]['median_ms']:.3f} ms" + (f" ({row[v]['pct_peak']:.0f}% of peak)" if "pct_peak" in row[v]
                                                        else "") for v in VARIANTS))
    write_recording(args.out, meta, t0, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
