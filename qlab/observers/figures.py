"""The observer figures of ``notebooks/02-observers-and-calibration.ipynb``. Each is a plain
function ``draw(fig, ...) -> result`` on a ``matplotlib.figure.Figure`` (never pyplot) that returns
what it shows, so a cell or a test can assert the figure's message and
:class:`qlab.widgets.LiveFigure` can redraw it from widget callbacks."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure

from .._checks import check_float_tensor, check_int, check_number
from .measure import compare_observers

__all__ = ["draw_ranges", "draw_explorer", "draw_channel_ranges"]

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _check_fig(fig):
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")


def _per_tensor(report: Mapping[str, dict]) -> dict[str, tuple[float, float]]:
    """name -> (lo, hi) for the per-tensor entries of a :func:`qlab.observers.compare_observers` report."""
    return {n: (r["lo"], r["hi"]) for n, r in report.items() if not isinstance(r["lo"], list)}


def _histogram_and_ranges(ax_hist, ax_rng, values: torch.Tensor, ranges: Mapping[str, tuple[float, float]], bins=120):
    v = values.detach().reshape(-1).double().numpy()
    lo_all = min([v.min()] + [lo for lo, _ in ranges.values()])
    hi_all = max([v.max()] + [hi for _, hi in ranges.values()])
    counts, edges = np.histogram(v, bins=bins, range=(lo_all, hi_all) if hi_all > lo_all else None)
    ax_hist.stairs(np.maximum(counts, 0.8), edges, fill=True, color="0.6", baseline=0.8)
    ax_hist.set_yscale("log")
    ax_hist.set_ylabel("count")
    for i, (_name, (lo, hi)) in enumerate(ranges.items()):
        c = _COLOURS[i % len(_COLOURS)]
        ax_rng.plot([lo, hi], [i, i], color=c, lw=5, solid_capstyle="butt")
        ax_hist.axvline(hi, color=c, lw=1, ls="--")
    ax_rng.set_yticks(range(len(ranges)), list(ranges))
    ax_rng.set_ylim(len(ranges) - 0.5, -0.5)
    ax_rng.set_xlabel("value")
    return counts


def draw_ranges(fig: Figure, values: torch.Tensor, report: Mapping[str, dict], *, title: str = "") -> dict:
    """The histogram of ``values`` (log counts) above the range ``[lo, hi]`` each observer chose.

    ``report`` is :func:`qlab.observers.compare_observers`'s result; per-channel entries are
    skipped (see :func:`draw_channel_ranges`). Returns ``{"ranges": name -> (lo, hi), "min", "max"}``.
    """
    _check_fig(fig)
    check_float_tensor("values", values)
    ranges = _per_tensor(report)
    ax_hist, ax_rng = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    _histogram_and_ranges(ax_hist, ax_rng, values, ranges)
    ax_hist.set_title(title or "values seen, and the range each observer keeps", fontsize=10)
    return {"ranges": ranges, "min": float(values.min()), "max": float(values.max())}


def draw_explorer(
    fig: Figure,
    *,
    calibration: torch.Tensor,
    heldout: torch.Tensor,
    observers: Mapping,
    outlier: float = 0.0,
    n_images: int = 128,
    bits: int = 8,
    batch_size: int = 32,
) -> dict:
    """Calibrate every observer and measure it: the draw function of notebook 02's explorer.

    ``calibration``: activations, one row per image; the first ``n_images`` are used, in
    batches of ``batch_size``. ``outlier > 0`` replaces the first value of the first batch
    by ``outlier * max|calibration|`` (one bad pixel, one glitchy activation). ``bits < 8``
    gives every observer the range ``[0, 2**bits - 1]``. The error is measured on ``heldout``.

    Draws the calibration histogram with each observer's range (left) and the held-out
    SQNR in dB per observer (right). Returns ``{"report", "outlier_value", "n_images", "bits"}``
    with ``report`` from :func:`qlab.observers.compare_observers`.
    """
    _check_fig(fig)
    check_float_tensor("calibration", calibration)
    check_float_tensor("heldout", heldout)
    check_int("n_images", n_images, 1, len(calibration))
    check_int("bits", bits, 2, 8)
    check_number("outlier", outlier, 0)
    x = calibration[:n_images].clone()
    outlier_value = float(outlier) * float(x.abs().max())
    if outlier > 0:
        x.view(-1)[0] = outlier_value
    kw = {} if bits == 8 else {"quant_min": 0, "quant_max": 2**bits - 1}
    makers = {name: (lambda make=make: make(**kw)) for name, make in observers.items()}
    report = compare_observers(makers, torch.split(x, batch_size), heldout)

    gs = fig.add_gridspec(2, 2, width_ratios=[3, 2], height_ratios=[2, 1])
    ax_hist = fig.add_subplot(gs[0, 0])
    ax_rng = fig.add_subplot(gs[1, 0], sharex=ax_hist)
    ax_err = fig.add_subplot(gs[:, 1])
    ranges = _per_tensor(report)
    _histogram_and_ranges(ax_hist, ax_rng, x, ranges)
    ax_hist.set_title(
        f"calibration: {n_images} images" + (f", outlier {outlier_value:.3g}" if outlier else ""), fontsize=10
    )
    names = list(report)
    sqnr = [report[n]["sqnr_db"] for n in names]
    bars = ax_err.barh(
        range(len(names)), sqnr, color=[_COLOURS[i % len(_COLOURS)] for i in range(len(names))], height=0.6
    )
    ax_err.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    finite = [v for v in sqnr if np.isfinite(v)] or [0.0]
    ax_err.set_xlim(max(0.0, min(finite) - 8), max(finite) + 6)  # start near the data: differences of a few dB show
    ax_err.set_yticks(range(len(names)), names)
    ax_err.set_ylim(len(names) - 0.5, -0.5)
    ax_err.set_xlabel(f"held-out SQNR, dB ({bits}-bit)")
    return {"report": report, "outlier_value": outlier_value, "n_images": n_images, "bits": bits}


def draw_channel_ranges(fig: Figure, lo: torch.Tensor, hi: torch.Tensor, *, title: str = "") -> dict:
    """Per-channel ranges ``[lo[c], hi[c]]`` as bars, with the per-tensor range ``[min lo, max hi]``
    dashed. Returns ``{"channels", "per_tensor": (lo, hi), "narrowest_fraction"}``: the
    narrowest channel's width as a fraction of the per-tensor width."""
    _check_fig(fig)
    check_float_tensor("lo", lo)
    check_float_tensor("hi", hi)
    if lo.dim() != 1 or lo.shape != hi.shape:
        raise ValueError(f"lo and hi must be 1-D tensors of one shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    ax = fig.add_subplot()
    c = np.arange(len(lo))
    ax.bar(c, (hi - lo).numpy(), bottom=lo.numpy(), color=_COLOURS[0], width=0.8)
    t_lo, t_hi = float(lo.min()), float(hi.max())
    for v in (t_lo, t_hi):
        ax.axhline(v, color="0.3", ls="--", lw=1)
    ax.set_xlabel("output channel")
    ax.set_ylabel("weight range")
    ax.set_title(title or "per-channel ranges; dashed: the per-tensor range", fontsize=10)
    width = float((hi - lo).min()) / (t_hi - t_lo) if t_hi > t_lo else 1.0
    return {"channels": len(lo), "per_tensor": (t_lo, t_hi), "narrowest_fraction": width}
