"""Where the time goes and what the recording says, for notebook 10: profiler tables, the SmoothQuant figure,
the latency sweep of ``benchmarks/results/transformer.json`` and the issue's targets. Taught in
``notebooks/10-real-transformer-int8.ipynb``.

Every draw function returns what it shows, so the notebook asserts the figure's message.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib

import torch

from ._checks import check_choice, check_int, check_number

__all__ = ["RESULTS", "load_results", "profile_ops", "format_profile", "draw_smoothing", "draw_latency",
           "speedup_table", "targets"]

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "transformer.json"


def load_results(path: pathlib.Path | None = None) -> dict:
    """The committed benchmark recording (``benchmarks/bench_transformer.py``)."""
    return json.loads(pathlib.Path(path or RESULTS).read_text())


@contextlib.contextmanager
def _quiet_stderr():
    """Point file descriptor 2 at /dev/null for the block: the profiler's C++ library (kineto) writes a
    ``profiler_start``/``profiler_stop`` line per run and a failed GPU probe there, below Python's reach."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def profile_ops(fn, runs: int = 3, top: int = 8, quiet: bool = True) -> list[dict]:
    """Run ``fn()`` ``runs`` times under ``torch.profiler`` (CPU) and return the ``top`` operators by self CPU
    time: ``{"op", "calls", "self_ms", "share"}`` per forward (calls and milliseconds divided by ``runs``;
    ``share`` of the total self time). ``quiet``: silence the profiler library's own log lines on stderr
    (start/stop and "gpuGetDeviceCount failed" on a CPU-only machine) while it runs."""
    from torch.profiler import ProfilerActivity, profile

    check_int("runs", runs, 1)
    check_int("top", top, 1)
    if not callable(fn):
        raise TypeError(f"fn must be a zero-argument callable, got {type(fn).__name__}")
    with torch.no_grad():
        fn()  # warm-up: first-call allocations and lazy initialisation stay out of the table
        with _quiet_stderr() if quiet else contextlib.nullcontext(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn()
    events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "quantized::", "qlab::", "onednn::",
                                                                   "mkldnn::", "mkl::"))]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "calls": e.count // runs, "self_ms": e.self_cpu_time_total / 1e3 / runs,
             "share": e.self_cpu_time_total / total} for e in events[:top]]


def format_profile(rows: list[dict], title: str) -> str:
    lines = [f"{title}: {sum(r['self_ms'] for r in rows):.1f} ms in the top {len(rows)} ops per forward",
             f"  {'op':34s} {'calls':>5s} {'self ms':>8s} {'share':>6s}"]
    lines += [f"  {r['op'][:34]:34s} {r['calls']:5d} {r['self_ms']:8.2f} {r['share']:6.1%}" for r in rows]
    return "\n".join(lines)


def draw_smoothing(fig, act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float,
                   recorded: dict | None = None) -> dict:
    """One smoothing point (equation 1 of :mod:`qlab.smoothquant`): the per-channel ``max|X|`` and ``max|W|``
    before (grey) and after (colour) smoothing with ``alpha``; ``recorded`` maps alpha (as ``"0.5"``) to the
    recorded static int8 result (``min_cosine``), shown in the title. Returns the ratios max/median of both
    sides after smoothing and the recorded min cosine (``None`` if not recorded)."""
    from .smoothquant import smoothing_factors

    alpha = check_number("alpha", alpha, 0.0, 1.0)
    s = smoothing_factors(act_max, weight_max, alpha)
    a2, w2 = act_max / s, weight_max * s
    ratio = {k: float(v.max() / v.median()) for k, v in (("act_before", act_max), ("act_after", a2),
                                                         ("weight_before", weight_max), ("weight_after", w2))}
    cos = None if recorded is None else recorded.get(f"{alpha:g}", {}).get("min_cosine")
    axes = fig.subplots(1, 2)
    for ax, before, after, what, colour in ((axes[0], act_max, a2, "activation max|X_j|", "tab:blue"),
                                            (axes[1], weight_max, w2, "weight max|W_j|", "tab:orange")):
        ch = range(len(before))
        ax.bar(ch, before.numpy(), width=1.0, color="0.75", label="before")
        ax.bar(ch, after.numpy(), width=1.0, color=colour, alpha=0.8, label=f"after, α={alpha:g}")
        ax.set_xlabel("input channel j")
        ax.set_title(what, fontsize=9)
        ax.legend(fontsize=7)
    extra = f"; recorded static int8 min cosine {cos:.3f}" if cos is not None else ""
    fig.suptitle(f"max/median: activation {ratio['act_after']:.1f} (was {ratio['act_before']:.1f}), "
                 f"weight {ratio['weight_after']:.1f} (was {ratio['weight_before']:.1f}){extra}", fontsize=9)
    return {"alpha": alpha, **ratio, "min_cosine": cos}


def speedup_table(bench: dict, threads: str = "1", shape: str = "sentences") -> dict[str, dict]:
    """Per path at one thread count and shape: median, IQR (ms), speedup over fp32 eager (paired per round)
    and over fp32 compiled (ratio of medians)."""
    lat = bench["latency"][threads]["shapes"][shape]["paths"]
    comp = lat.get("fp32 compiled", {}).get("median_ms")
    return {n: {"median_ms": p["median_ms"], "iqr": (p["q25_ms"], p["q75_ms"]),
                "vs_fp32": p["speedup_vs_fp32"], "vs_compiled": comp / p["median_ms"] if comp else None}
            for n, p in lat.items()}


def draw_latency(fig, bench: dict, paths: list[str], threads: str = "1") -> dict:
    """Speedup over fp32 eager against sequence length, one panel per batch size, for ``paths``. Returns
    ``{batch: {path: {seq: speedup}}}`` -- what the panels plot."""
    shapes = bench["latency"][threads]["shapes"]
    grid: dict[int, dict[str, dict[int, float]]] = {}
    for name, sh in shapes.items():
        if "x" not in name:
            continue
        b, t = (int(v) for v in name.split("x"))
        for p in paths:
            check_choice("paths", p, list(sh["paths"]))
            grid.setdefault(b, {}).setdefault(p, {})[t] = sh["paths"][p]["speedup_vs_fp32"]
    axes = fig.subplots(1, len(grid), sharey=True, squeeze=False)[0]
    for ax, (b, per_path) in zip(axes, sorted(grid.items()), strict=True):
        for p, pts in per_path.items():
            seqs = sorted(pts)
            ax.plot(seqs, [pts[s] for s in seqs], marker="o", label=p)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per sequence")
        ax.set_title(f"batch {b}, {threads} thread(s)", fontsize=9)
    axes[0].set_ylabel("speedup over fp32 eager")
    axes[-1].legend(fontsize=6, loc="best")
    return grid


def targets(bench: dict, threads: str = "1", shape: str = "sentences") -> dict[str, dict]:
    """The issue's targets for each int8 path (1 thread, the padded batch of 20 sentences): >= 2x fp32 eager,
    >= 1.5x fp32 compiled, min cosine >= 0.99, retrieval agreement >= 99 %. ``{path: {criterion: bool}}``."""
    table = speedup_table(bench, threads, shape)
    out = {}
    for name, t in table.items():
        if name.startswith(("fp32", "bf16")) or name not in bench["quality"]:
            continue
        q = bench["quality"][name]
        out[name] = {"2x fp32 eager": t["vs_fp32"] >= 2.0, "1.5x fp32 compiled": (t["vs_compiled"] or 0) >= 1.5,
                     "min cosine 0.99": q["min_cosine"] >= 0.99, "retrieval 99%": q["retrieval_agreement"] >= 0.99}
    return out
