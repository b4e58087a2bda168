"""How well an observer's ``(scale, zero_point)`` represent data, and several observers compared (``notebooks/02``)."""

from __future__ import annotations

import torch

from .._checks import check_axis, check_finite, check_float_tensor
from ._base import (
    _PER_CHANNEL,
    _Observer,
)

__all__ = ["quantization_error", "compare_observers", "report_table"]


def quantization_error(x: torch.Tensor, observer: _Observer) -> dict:
    """How well ``observer``'s current ``(scale, zero_point)`` represent ``x``::

        mse = mean((fake_quantize(x) - x)^2),   sqnr_db = 10 log10(sum(x^2) / sum((fake_quantize(x) - x)^2))

    plus ``clipped``, the fraction of ``x`` outside the representable range
    ``[(qmin - zero_point - 1/2) * scale, (qmax - zero_point + 1/2) * scale]``.
    Per-channel observers quantize ``x`` along their ``ch_axis``.
    """
    check_float_tensor("x", x)
    check_finite("x", x)
    return _error(x, observer, x.pow(2).sum(dtype=torch.float64))


def _error(x, observer, signal):
    scale, zero_point = observer.calculate_qparams()
    qmin, qmax = observer.quant_min, observer.quant_max
    shape = [1] * x.dim()
    with torch.no_grad():  # torch's kernels: equal to qlab.fake_quantize bit for bit, and faster on big tensors
        if observer.qscheme in _PER_CHANNEL:
            axis = check_axis("ch_axis", observer.ch_axis, x.dim())
            shape[axis] = -1
            xq = torch.fake_quantize_per_channel_affine(x, scale, zero_point.to(torch.int32), axis, qmin, qmax)
        else:
            xq = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)
    noise = (xq - x).pow(2).sum(dtype=torch.float64)
    s, z = scale.reshape(shape), zero_point.reshape(shape).float()
    lo, hi = (qmin - z - 0.5) * s, (qmax - z + 0.5) * s
    clipped = ((x < lo) | (x > hi)).sum() / max(x.numel(), 1)
    sqnr = float("inf") if noise == 0 else float(10 * torch.log10(signal / noise))
    return {"mse": float(noise) / max(x.numel(), 1), "sqnr_db": sqnr, "clipped": float(clipped)}


def compare_observers(observers, calibration, heldout: torch.Tensor) -> dict[str, dict]:
    """Calibrate each observer on the ``calibration`` batches, then measure it on ``heldout``.

    ``observers``: name -> a zero-argument callable building a fresh observer
    (a class, or ``Class.with_args(...)``). Returns name -> a dict with ``lo``, ``hi`` (the
    chosen range: floats per tensor, lists per channel), ``scale``, ``zero_point``, and
    :func:`quantization_error`'s ``mse``, ``sqnr_db`` and ``clipped``.
    """
    check_float_tensor("heldout", heldout)
    check_finite("heldout", heldout)
    signal = heldout.pow(2).sum(dtype=torch.float64)
    batches = list(calibration)
    report = {}
    for name, make in observers.items():
        obs = make()
        for b in batches:
            obs(b)
        lo, hi = obs.chosen_range()
        scale, zero_point = obs.calculate_qparams()
        report[name] = {
            "lo": lo.tolist(),
            "hi": hi.tolist(),
            "scale": scale,
            "zero_point": zero_point,
            **_error(heldout, obs, signal),
        }
    return report


def report_table(report: dict) -> str:
    """:func:`compare_observers`' report as a table: the kept range, scale, zero point, held-out SQNR and
    the fraction clipped. Per-channel rows show the spread over channels."""
    lines = [f"{'observer':20s} {'lo':>7s} {'hi':>11s} {'scale':>9s} {'zp':>4s} {'SQNR dB':>8s} {'clipped':>8s}"]
    for name, r in report.items():
        if isinstance(r["lo"], list):  # per channel: the spread over channels
            hi = f"{min(r['hi']):.2f}..{max(r['hi']):.2f}"
            scale = f"{float(r['scale'].min()):.4f}.."
            lines.append(
                f"{name:20s} {min(r['lo']):7.3f} {hi:>11s} {scale:>9s} {'':>4s} {r['sqnr_db']:8.2f} {r['clipped']:8.4%}"
            )
        else:
            lines.append(
                f"{name:20s} {r['lo']:7.3f} {r['hi']:11.3f} {float(r['scale']):9.5f} "
                f"{int(r['zero_point']):4d} {r['sqnr_db']:8.2f} {r['clipped']:8.4%}"
            )
    return "\n".join(lines)
