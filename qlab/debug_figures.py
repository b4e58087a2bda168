"""The figures of ``notebooks/11-accuracy-debugging.ipynb`` (and the latency figure of ``14-deployment.ipynb``)
and the recorded results they read (``benchmarks/results/effnet.json``, written by ``benchmarks/bench_effnet.py``).

Every draw function takes a ``matplotlib.figure.Figure`` (never pyplot) and returns what it shows, so the
notebook can assert the figure's message.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch

from ._checks import check_choice, check_number

__all__ = ["RESULTS", "load_results", "layer_kind", "draw_layer_sqnr", "draw_sensitivity", "draw_ranges",
           "choose_step", "draw_budget", "draw_latency"]

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "effnet.json"
_COLOURS = {"depthwise": "tab:red", "expand": "tab:blue", "project": "tab:green", "stem/head/fc": "tab:gray"}


def load_results(path=None) -> dict:
    """The recorded benchmark (default :data:`RESULTS`)."""
    p = pathlib.Path(path) if path is not None else RESULTS
    if not p.is_file():
        raise FileNotFoundError(f"path must be a results file of benchmarks/bench_effnet.py, got {str(p)!r}")
    return json.loads(p.read_text())


def layer_kind(name: str) -> str:
    """``depthwise``, ``expand`` (1×1 up), ``project`` (1×1 down, no activation) or ``stem/head/fc``."""
    for key, kind in (("_depthwise_conv", "depthwise"), ("_expand_conv", "expand"), ("_project_conv", "project")):
        if key in name:
            return kind
    return "stem/head/fc"


def _legend(ax):
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=k) for k, c in _COLOURS.items()], fontsize=7, ncol=4, loc="lower left")


def draw_layer_sqnr(fig, runs: dict[str, list[dict]]) -> dict:
    """Propagated SQNR (equation (5)) after every convolution and the linear layer, one line per run of
    :func:`qlab.sensitivity.numeric_debug` (``{label: rows}``), points coloured by layer kind. Returns per run
    the layer where the SQNR falls most from the layer before it, and the final value."""
    ax = fig.add_subplot(1, 1, 1)
    out = {}
    for label, rows in runs.items():
        layers = [r for r in rows if r["op"] in ("conv2d", "linear")]
        y = np.array([r["sqnr_db"] for r in layers])
        ax.plot(np.arange(len(y)), y, "-", lw=1, label=label, alpha=0.7)
        ax.scatter(np.arange(len(y)), y, s=12, c=[_COLOURS[layer_kind(r["module"])] for r in layers], zorder=3)
        drops = -np.diff(y)
        k = int(np.argmax(drops)) + 1
        out[label] = {"largest_drop": layers[k]["module"], "drop_db": float(drops[k - 1]), "final_db": float(y[-1]),
                      "layers": len(layers)}
    ax.set_xlabel("convolution / linear layer, in order")
    ax.set_ylabel("SQNR vs float (dB)")
    ax.set_title("propagated error after each layer (numeric debugger)", fontsize=9)
    ax.add_artist(ax.legend(fontsize=7, loc="upper right"))
    _legend(ax)
    return out


def draw_sensitivity(fig, scans: dict, measure: str = "sqnr_db") -> dict:
    """The recorded ``only`` scans: the measure with just one layer quantized, per layer, per tensor (bars) and
    per channel (dots), coloured by layer kind. Returns the five most harmful layers of each."""
    check_choice("measure", measure, ["sqnr_db", "kl", "top1", "top5"])
    ax = fig.add_subplot(1, 1, 1)
    out = {}
    for w, style in (("per_tensor", "bar"), ("per_channel", "dot")):
        rows = scans[f"{w}/only"]
        y = np.array([r["measures"][measure]["value"] for r in rows])
        colours = [_COLOURS[layer_kind(r["layer"])] for r in rows]
        if style == "bar":
            ax.bar(np.arange(len(y)), y, color=colours, alpha=0.8)
        else:
            ax.plot(np.arange(len(y)), y, "k.", ms=4, label="per channel")
        order = np.argsort(y) if measure in ("sqnr_db", "top1", "top5") else np.argsort(-y)
        out[w] = [(rows[i]["layer"], float(y[i])) for i in order[:5]]
    ax.set_xlabel("the one quantized layer")
    ax.set_ylabel(measure)
    ax.set_title("only this layer in int8: bars per tensor, dots per channel", fontsize=9)
    _legend(ax)
    return out


def draw_ranges(fig, weights: dict[str, torch.Tensor]) -> dict:
    """Per-output-channel max |w| of one layer's weights, sorted, for each variant (``{label: weight}``), with
    the per-tensor int8 step (max |w| / 127.5) as a dashed line. Returns, per variant, how many channels have
    a range below one step (all their weights round to 0 or ±1 step)."""
    from .cle import weight_ranges

    ax = fig.add_subplot(1, 1, 1)
    out = {}
    for i, (label, w) in enumerate(weights.items()):
        r = weight_ranges(w, 0).numpy()
        step = r.max() / 127.5
        line = ax.semilogy(np.sort(r)[::-1] + 1e-12, label=label)[0]
        ax.axhline(step, ls="--", lw=1, color=line.get_color())
        out[label] = {"below_one_step": int((r < step).sum()), "channels": len(r), "max_over_median": float(
            r.max() / np.median(r)), "dead": int((r == 0).sum())}
        ax.text(len(r) * 0.55, step * 1.3, f"one int8 step ({label})", fontsize=7, color=line.get_color(),
                va="bottom" if i == 0 else "top")
    ax.set_xlabel("output channel, sorted by range")
    ax.set_ylabel("max |w| (log)")
    ax.legend(fontsize=7)
    return out


def choose_step(steps: list[dict], budget: float, measure: str = "sqnr_db") -> int | None:
    """The first recorded mixed-precision step whose ``measure`` meets ``budget`` at the pessimistic end of its
    interval (``None`` if none does)."""
    check_choice("measure", measure, ["sqnr_db", "kl", "top1", "top5"])
    check_number("budget", budget)
    for k, s in enumerate(steps):
        m = s["measures"][measure]
        if (m["low"] >= budget) if measure != "kl" else (m["high"] <= budget):
            return k
    return None


def _step_latency(latency: dict, k: int):
    name = "int8 per channel compiled" if k == 0 else f"mixed: {k} float"
    v = latency["variants"].get(name)
    return None if v is None else (v["median_ms"], v["q25_ms"], v["q75_ms"])


def draw_budget(fig, record: dict, budget: float, threads: str = "1") -> dict:
    """The recorded mixed-precision path (per channel, layers kept in float one at a time, most harmful first):
    left, logit SQNR with its 95% interval per step and the ``budget``; right, each step's compiled latency
    (median, IQR) against fp32 compiled. Returns the chosen step: float layers, SQNR, latency, size."""
    steps, lat = record["mixed"]["steps"], record["latency"][threads]
    k = choose_step(steps, budget)
    ax, bx = fig.subplots(1, 2)
    x = np.arange(len(steps))
    v = np.array([s["measures"]["sqnr_db"]["value"] for s in steps])
    lo = np.array([s["measures"]["sqnr_db"]["low"] for s in steps])
    hi = np.array([s["measures"]["sqnr_db"]["high"] for s in steps])
    ax.errorbar(x, v, yerr=[v - lo, hi - v], fmt="o", ms=4, capsize=3, color="tab:blue")
    ax.axhline(budget, color="tab:red", ls="--", lw=1, label=f"budget {budget:.1f} dB")
    ax.set_xlabel("layers kept in float")
    ax.set_ylabel("logit SQNR (dB), 95% interval")
    ax.legend(fontsize=7, loc="upper left")
    meds = [_step_latency(lat, i) for i in x]
    ms = np.array([m[0] if m else np.nan for m in meds])
    err = np.array([[m[0] - m[1], m[2] - m[0]] if m else [0, 0] for m in meds]).T
    colours = ["tab:gray"] * len(steps)
    if k is not None:
        colours[k] = "tab:red"
        ax.plot([k], [v[k]], "o", ms=9, mfc="none", color="tab:red")
    bx.bar(x, ms, yerr=err, color=colours, capsize=2)
    fp32 = lat["variants"]["fp32 compiled"]["median_ms"]
    bx.axhline(fp32, color="k", ls=":", lw=1, label="fp32 compiled")
    bx.set_xlabel("layers kept in float")
    bx.set_ylabel(f"latency, ms ({threads} thread{'s' if threads != '1' else ''})")
    bx.legend(fontsize=7, loc="lower right")
    if k is None:
        return {"step": None, "budget": budget}
    s = steps[k]
    return {"step": k, "budget": budget, "float_layers": s["float_layers"], "sqnr_db": s["measures"]["sqnr_db"],
            "latency_ms": ms[k], "fp32_compiled_ms": fp32, "mb": s["bytes"] / 1e6}


def draw_latency(fig, latency: dict, names: list[str]) -> dict:
    """Median latency with its IQR, per variant and thread count (``latency`` = the recorded ``latency``
    section, ``names`` the variants to show). Returns ``{threads: {name: (median, q25, q75)}}``."""
    threads = sorted(latency, key=int)
    axes = fig.subplots(1, len(threads), sharey=True, squeeze=False)[0]
    out = {}
    for ax, th in zip(axes, threads, strict=True):
        rows = {n: latency[th]["variants"][n] for n in names if n in latency[th]["variants"]}
        y = np.arange(len(rows))
        med = np.array([r["median_ms"] for r in rows.values()])
        err = np.array([[r["median_ms"] - r["q25_ms"], r["q75_ms"] - r["median_ms"]] for r in rows.values()]).T
        ax.barh(y, med, xerr=err, color=["tab:gray" if "fp32" in n else "tab:blue" for n in rows], capsize=2)
        ax.set_yticks(y, list(rows), fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"ms per image, {th} thread{'s' if th != '1' else ''}")
        out[th] = {n: (r["median_ms"], r["q25_ms"], r["q75_ms"]) for n, r in rows.items()}
    return out
