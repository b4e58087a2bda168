"""Benchmark results and their figures: ``notebooks/07-x86-performance.ipynb``.

Timings come from :mod:`qlab.timing` (interleaved rounds, medians with spread). The
**speedup** of a path is ``t_fp32 / t_path`` (> 1: faster than fp32 eager), and the
summary over models is the geometric mean (:func:`qlab.timing.geomean`)::

    geomean(r_1 .. r_n) = exp(mean(log r_i))

**Results** (``benchmarks/results/models.json``, written by
``benchmarks/bench_models.py``): ``{"machine": {...}, "records": [...], "sweep": [...]}``.
Each record is one (model, path, batch): ``status`` ("ok", "skipped" or "failed"),
``ms`` (median), ``fp32_ms`` (fp32 eager, timed interleaved in the same run),
``speedup`` (= fp32_ms / ms), ``bytes`` and ``fp32_bytes`` (state_dict sizes), ``agreement``
(``sqnr_db`` of the logits against fp32's). A record below :data:`MIN_SQNR_DB` computes the wrong
thing: its time is not a speedup, so :func:`geomeans` leaves it out (and says so).

**Kernel results** (``benchmarks/results/kernels.json``, written by
``benchmarks/bench_kernels.py``): qlab's int8 bmm and linear against fp32 and
PyTorch's int8 alternatives on ViT shapes; :func:`draw_kernels` plots them.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterable, Mapping

from matplotlib.figure import Figure

from ._checks import check_choice, check_number
from .timing import geomean

__all__ = [
    "RESULTS",
    "load_results",
    "MIN_SQNR_DB",
    "ok_records",
    "broken_records",
    "speedup_table",
    "geomeans",
    "crossover",
    "draw_speedups",
    "draw_geomeans",
    "draw_sizes",
    "draw_sweep",
    "KERNEL_RESULTS",
    "load_kernel_results",
    "kernel_table",
    "draw_kernels",
]

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "models.json"
#: Below this SQNR (dB) of the logits against fp32 an int8 model is broken, not fast (notebook 07, section 2).
MIN_SQNR_DB = 10.0


# --------------------------------------------------------------------------- results
def load_results(path=None) -> dict:
    """The benchmark results file (default :data:`RESULTS`) as a dict with ``machine``, ``records``, ``sweep``."""
    p = pathlib.Path(path) if path is not None else RESULTS
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run `python benchmarks/bench_models.py` (see benchmarks/README.md)")
    data = json.loads(p.read_text())
    for key in ("machine", "records"):
        if key not in data:
            raise ValueError(f"{p.name} has no {key!r} section: not a bench_models.py results file")
    data.setdefault("sweep", [])
    return data


def _records(results) -> list[dict]:
    if isinstance(results, Mapping):
        return list(results["records"])
    return list(results)


def ok_records(results, batch: int | None = None) -> list[dict]:
    """The records that ran (``status == "ok"``), optionally of one batch size."""
    return [r for r in _records(results) if r.get("status") == "ok" and (batch is None or r["batch"] == batch)]


def _sqnr(r: dict) -> float | None:
    return (r.get("agreement") or {}).get("sqnr_db")


def broken_records(results, batch: int | None = None, min_sqnr_db: float = MIN_SQNR_DB) -> list[dict]:
    """The records that ran but whose logits are further than ``min_sqnr_db`` from fp32's."""
    check_number("min_sqnr_db", min_sqnr_db)
    return [r for r in ok_records(results, batch) if _sqnr(r) is not None and _sqnr(r) < min_sqnr_db]


def speedup_table(results, batch: int, min_sqnr_db: float | None = None) -> dict[str, dict[str, float]]:
    """``{path: {model: speedup over fp32 eager}}`` at one batch size; with ``min_sqnr_db``, only the
    records whose logits are at least that close to fp32's."""
    broken = {id(r) for r in broken_records(results, batch, min_sqnr_db)} if min_sqnr_db is not None else set()
    table: dict[str, dict[str, float]] = {}
    for r in ok_records(results, batch):
        if id(r) not in broken:
            table.setdefault(r["path"], {})[r["model"]] = r["speedup"]
    return table


def geomeans(
    results,
    batch: int,
    paths: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    min_sqnr_db: float | None = MIN_SQNR_DB,
) -> dict[str, dict]:
    """Per path: ``{"geomean", "n", "models", "excluded"}`` of the speedups at ``batch``.

    ``models`` restricts every path to the same set (comparable geomeans); by default each path uses
    all the models it ran on. Records below ``min_sqnr_db`` (default :data:`MIN_SQNR_DB`; ``None``
    keeps them) are left out and listed in ``excluded``: a model that computes the wrong thing has no
    speedup.
    """
    table = speedup_table(results, batch, min_sqnr_db)
    everything = speedup_table(results, batch)
    keep = None if models is None else set(models)
    out = {}
    for path in list(paths) if paths is not None else sorted(everything):
        vals = {m: s for m, s in table.get(path, {}).items() if keep is None or m in keep}
        excluded = sorted(m for m in everything.get(path, {}) if m not in vals and (keep is None or m in keep))
        if vals:
            out[path] = {"geomean": geomean(vals.values()), "n": len(vals), "models": sorted(vals),
                         "excluded": excluded}
    return out


def crossover(sizes: Iterable[float], ratios: Iterable[float]) -> float | None:
    """The smallest size from which every larger size has ``ratio > 1`` (int8 faster).

    ``None`` if int8 never wins at the largest size. Sizes must be increasing.
    """
    s, r = list(sizes), list(ratios)
    if len(s) != len(r) or not s:
        raise ValueError(f"sizes and ratios must be non-empty and of one length, got {len(s)} and {len(r)}")
    if any(b <= a for a, b in zip(s, s[1:], strict=False)):
        raise ValueError(f"sizes must be strictly increasing, got {s}")
    found = None
    for size, ratio in zip(reversed(s), reversed(r), strict=False):
        if ratio > 1:
            found = size
        else:
            break
    return found


# --------------------------------------------------------------------------- figures
_PATH_COLORS = {
    "fp32_inductor": "#bdbdbd",
    "eager_fbgemm": "#fdae6b",
    "eager_x86": "#e6550d",
    "fx_fbgemm": "#9ecae1",
    "fx_x86": "#3182bd",
    "pt2e_inductor": "#31a354",
    "pt2e_nofreeze": "#a1d99b",
    "qlab_vit": "#756bb1",
}


def _color(path: str) -> str:
    return _PATH_COLORS.get(path, "#636363")


def _plain_log(axis, suffix: str = "x") -> None:
    """Label a log axis 0.5x, 1x, 2x ... instead of 5x10^-1, 10^0, 2x10^0."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    axis.set_minor_formatter(NullFormatter())


def draw_speedups(fig: Figure, results, batch: int, paths: Iterable[str] | None = None) -> dict:
    """Grouped bars: speedup over fp32 eager per model (groups) and path (bars), log scale, line at 1x.
    Returns ``{"speedups": {path: {model: x}}, "slower": [(model, path, x) with x < 1]}``."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    table = speedup_table(results, batch)
    paths = [p for p in (list(paths) if paths is not None else sorted(table)) if p in table and p != "fp32"]
    models = sorted({m for p in paths for m in table[p]})
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(paths), 1)
    for j, p in enumerate(paths):
        xs = [i + (j - (len(paths) - 1) / 2) * width for i, m in enumerate(models) if m in table[p]]
        ys = [table[p][m] for m in models if m in table[p]]
        ax.bar(xs, ys, width=width, color=_color(p), label=p, edgecolor="#333333", linewidth=0.3)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_yticks([0.5, 1, 2, 4, 8])
    _plain_log(ax.yaxis)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("speedup over fp32 eager (log)")
    ax.set_title(f"batch {batch}", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    slower = sorted((m, p, table[p][m]) for p in paths for m in table[p] if table[p][m] < 1)
    return {"speedups": {p: dict(table[p]) for p in paths}, "slower": slower}


def draw_geomeans(
    fig: Figure,
    results,
    batches: Iterable[int],
    paths: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
) -> dict:
    """Geomean speedup per path (bars) for each batch size (panels). Returns ``{batch: geomeans(...)}``."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    batches = list(batches)
    axes = fig.subplots(1, len(batches), squeeze=False, sharey=True)[0]
    out = {}
    for ax, b in zip(axes, batches, strict=False):
        g = geomeans(results, b, paths, models)
        g.pop("fp32", None)
        out[b] = g
        names = list(g)
        vals = [g[n]["geomean"] for n in names]
        ax.barh(range(len(names)), vals, color=[_color(n) for n in names], edgecolor="#333333", linewidth=0.3)
        for i, (n, v) in enumerate(zip(names, vals, strict=False)):
            ax.text(v, i, f" {v:.2f}x (n={g[n]['n']})", va="center", fontsize=6)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(min(vals + [1.0]) / 1.2, max(vals + [1.0]) * 1.8)
        ax.set_xticks([1, 2, 4])
        _plain_log(ax.xaxis)
        ax.set_title(f"geomean speedup, batch {b}", fontsize=9)
    return out


def draw_sizes(fig: Figure, results) -> dict:
    """fp32 vs int8 ``state_dict`` bytes per model (the FX x86 model, else any int8 path).
    Returns ``{model: {"fp32": bytes, "int8": bytes, "ratio": fp32 / int8}}``."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    sizes: dict[str, dict] = {}
    for r in sorted(ok_records(results), key=lambda r: (r["path"] != "fx_x86", r["path"])):
        if r["path"] == "fp32" or not r.get("bytes") or not r.get("fp32_bytes"):
            continue
        sizes.setdefault(r["model"], {"fp32": r["fp32_bytes"], "int8": r["bytes"], "path": r["path"]})
    for s in sizes.values():
        s["ratio"] = s["fp32"] / s["int8"]
    models = sorted(sizes)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(models))
    ax.bar([x - 0.2 for x in xs], [sizes[m]["fp32"] / 2**20 for m in models], 0.4, label="fp32", color="#bdbdbd")
    ax.bar([x + 0.2 for x in xs], [sizes[m]["int8"] / 2**20 for m in models], 0.4, label="int8", color="#3182bd")
    for x, m in zip(xs, models, strict=False):
        ax.text(x + 0.2, sizes[m]["int8"] / 2**20, f"{sizes[m]['ratio']:.1f}x", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(list(xs), models, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("state_dict size (MiB)")
    ax.legend(fontsize=7)
    return sizes


def draw_sweep(fig: Figure, sweep: list[dict]) -> dict:
    """Speedup of int8 over fp32 against size, one panel per layer kind in ``sweep``.

    Each sweep row: ``{"layer", "x", "xlabel", "fp32_ms", "int8_ms", "int8_op_ms"}``. Two curves:
    the whole quantized layer called on float input (quantize + int8 kernel + dequantize) and
    the int8 kernel alone on already-quantized input. Returns ``{layer: {"x", "speedup",
    "kernel_speedup", "crossover", "kernel_crossover"}}``.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    layers: dict[str, list[dict]] = {}
    for row in sweep:
        layers.setdefault(row["layer"], []).append(row)
    if not layers:
        raise ValueError("sweep is empty: run benchmarks/bench_models.py (it writes the sweep too)")
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    out = {}
    for ax, (layer, rows) in zip(axes, layers.items(), strict=False):
        rows = sorted(rows, key=lambda r: r["x"])
        x = [r["x"] for r in rows]
        s = [r["fp32_ms"] / r["int8_ms"] for r in rows]
        k = [r["fp32_ms"] / r["int8_op_ms"] for r in rows]
        ax.plot(x, s, "o-", color="#3182bd", label="float in/out (q + int8 + dq)")
        ax.plot(x, k, "s--", color="#31a354", label="int8 kernel alone")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        _plain_log(ax.xaxis, "")
        ax.set_yscale("log")
        ax.set_yticks([0.25, 0.5, 1, 2, 4])
        _plain_log(ax.yaxis)
        ax.set_xlabel(rows[0].get("xlabel", "size"), fontsize=8)
        ax.set_ylabel("speedup over fp32", fontsize=8)
        ax.set_title(rows[0].get("title", layer), fontsize=8)
        c, ck = crossover(x, s), crossover(x, k)
        if c is not None:
            ax.axvline(c, color="#3182bd", linestyle=":", linewidth=0.8)
        ax.legend(fontsize=6)
        out[layer] = {"x": x, "speedup": s, "kernel_speedup": k, "crossover": c, "kernel_crossover": ck}
    return out


# --------------------------------------------------------------------------- qlab's kernels
KERNEL_RESULTS = RESULTS.parent / "kernels.json"
KERNEL_METHODS = ("fp32", "q.matmul", "deq-bmm-q", "int_mm", "qlab", "qlab-fixed", "qlab-vnni", "torch.ao")


def load_kernel_results(path=None) -> dict:
    """``benchmarks/results/kernels.json`` (written by ``benchmarks/bench_kernels.py``): ``machine``,
    ``assumptions`` (the measured peaks), ``targets`` and ``results`` (one row per shape, threads and method)."""
    p = pathlib.Path(path) if path is not None else KERNEL_RESULTS
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run `python benchmarks/bench_kernels.py` (see benchmarks/README.md)")
    data = json.loads(p.read_text())
    for key in ("machine", "results"):
        if key not in data:
            raise ValueError(f"{p.name} has no {key!r} section: not a bench_kernels.py results file")
    return data


def kernel_table(results, kind: str = "attention", threads: int = 1) -> dict[str, dict[str, float]]:
    """``{"<model> <shape>": {method: median ms}}`` for ``kind`` ("attention" or "linear") at ``threads``."""
    check_choice("kind", kind, ["attention", "linear"])
    table: dict[str, dict[str, float]] = {}
    for r in results["results"]:
        if r["kind"] == kind and r["threads"] == threads:
            table.setdefault(f"{r['model']} {r['shape']}", {})[r["method"]] = r["ms"]
    if not table:
        have = sorted({(r["kind"], r["threads"]) for r in results["results"]})
        raise ValueError(f"no {kind!r} rows at threads={threads} in the kernel results; it has {have}")
    return table


def draw_kernels(fig: Figure, results, kind: str = "attention", threads: int = 1) -> dict:
    """Horizontal bars: each method's speed relative to fp32 (``fp32 ms / method ms``, log scale) per shape.
    Returns ``{"speedup": {shape: {method: x}}}``, the numbers the bars show."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
    table = kernel_table(results, kind, threads)
    shapes = list(table)
    methods = [m for m in KERNEL_METHODS if m != "fp32" and any(m in t for t in table.values())]
    speedup = {s: {m: table[s]["fp32"] / table[s][m] for m in methods if m in table[s]} for s in shapes}
    colors = dict(
        zip(KERNEL_METHODS, ["#636363", "#fdae6b", "#e6550d", "#9ecae1", "#3182bd", "#08519c", "#6baed6", "#31a354"],
            strict=True)
    )
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        ys = [i + (j - (len(methods) - 1) / 2) * height for i, s in enumerate(shapes) if m in speedup[s]]
        xs = [speedup[s][m] for s in shapes if m in speedup[s]]
        ax.barh(ys, xs, height=height, color=colors[m], label=m, edgecolor="#333333", linewidth=0.3)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks([0.5, 1, 2, 4, 8])
    _plain_log(ax.xaxis)
    ax.set_yticks(range(len(shapes)), shapes, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("speed relative to fp32 (log; > 1x: faster)")
    ax.set_title(f"{kind}, {threads} thread(s)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, not over the bars
    return {"speedup": speedup}
