"""Equations (5) and (6) of :mod:`qlab.observers`: percentile and MSE-optimal ranges, no torch.ao twin
(``notebooks/02``)."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int, check_number
from .histogram import HistogramObserver

__all__ = ["PercentileObserver", "MSEObserver"]


class PercentileObserver(HistogramObserver):
    """Equation (5): clip to the ``(100 - percentile)``-th and ``percentile``-th percentiles.

    Records the same running histogram as :class:`HistogramObserver`; the
    percentiles are read from its cumulative distribution, linear inside a bin
    (so they are exact up to the bin width ``(max - min) / bins``). ``percentile=100``
    gives back min/max. No torch.ao twin: TensorRT-style calibration for
    activations whose rare outliers would waste the integer range.
    """

    def __init__(
        self,
        percentile=99.99,
        bins=2048,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        factory_kwargs=None,
        eps=torch.finfo(torch.float32).eps,
        is_dynamic=False,
    ):
        super().__init__(bins, dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        check_number("percentile", percentile, 50, 100, lo_open=True)
        self.percentile = float(percentile)

    def chosen_range(self):
        self._check_ready()
        hist = self.histogram.double()
        edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1, dtype=torch.float64)
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(hist, 0) / hist.sum()])
        tail = 1 - self.percentile / 100
        lo, hi = _inverse_cdf(cdf, edges, tail), _inverse_cdf(cdf, edges, 1 - tail)
        lo = torch.clamp(lo.float(), self.min_val, self.max_val)
        hi = torch.clamp(hi.float(), lo, self.max_val)
        return lo, hi

    def extra_repr(self):
        return f"percentile={self.percentile}, " + super().extra_repr()


def _inverse_cdf(cdf, edges, q):
    """The value below which a fraction ``q`` of the histogram lies (piecewise-linear CDF)."""
    i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64), right=False))
    i = min(max(i, 1), len(cdf) - 1)
    lo_c, hi_c = cdf[i - 1], cdf[i]
    t = (q - lo_c) / (hi_c - lo_c) if hi_c > lo_c else torch.tensor(0.0, dtype=torch.float64)
    return edges[i - 1] + t.clamp(0, 1) * (edges[i] - edges[i - 1])


class MSEObserver(HistogramObserver):
    """Equation (6): the clipping range that minimises the quantization MSE.

    Records the same running histogram as :class:`HistogramObserver`. Candidate
    bounds are ``lo_i = g_i * min(min_val, 0)`` and ``hi_j = g_j * max(max_val, 0)``,
    with ``g`` the ``candidates`` evenly spaced factors ``1/candidates, ..., 1`` plus
    ``candidates // 2`` geometric ones from 1 down to ``smallest`` (so the bulk of
    the data is found even behind an outlier 1000x larger). The error of
    a range is measured by :meth:`mse`: fake-quantize every non-empty bin's centre
    with the exact scale and zero point :func:`qlab.choose_qparams` gives that
    range, and average the squared errors weighted by the bin counts.
    :meth:`chosen_range` starts from the full range and alternately picks the best
    ``hi`` for the current ``lo`` and the best ``lo`` for the current ``hi`` until
    neither changes (a coordinate search; the widest bound wins a tie).

    Clipping error (values beyond ``hi`` become ``hi``) trades against rounding
    error (about ``scale^2 / 12`` per value): squared errors weigh a far outlier
    heavily, so unlike :class:`PercentileObserver` this observer keeps an outlier
    that carries enough of the error. No torch.ao twin.
    """

    def __init__(
        self,
        candidates=128,
        smallest=1e-3,
        bins=2048,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        factory_kwargs=None,
        eps=torch.finfo(torch.float32).eps,
        is_dynamic=False,
    ):
        super().__init__(bins, dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        check_int("candidates", candidates, 2)
        check_number("smallest", smallest, 0, 1, lo_open=True, hi_open=True)
        self.candidates = candidates
        self.smallest = float(smallest)

    def candidates_lo_hi(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidate bounds, widest first: ``lo`` ascending from ``min(min_val, 0)``,
        ``hi`` descending from ``max(max_val, 0)``."""
        self._check_ready()
        k = self.candidates
        linear = torch.arange(1, k + 1, dtype=torch.float32) / k  # 1/k, ..., 1
        geometric = torch.logspace(0.0, float(np.log10(self.smallest)), k // 2)  # 1 ... smallest
        g = torch.cat([linear, geometric])
        lo = torch.unique(g * torch.clamp(self.min_val, max=0.0))
        hi = torch.unique(g * torch.clamp(self.max_val, min=0.0)).flip(0)
        return lo, hi

    def mse(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The histogram's mean squared quantization error for each range ``[lo[k], hi[k]]``."""
        self._check_ready()
        lo, hi = torch.broadcast_tensors(torch.as_tensor(lo).reshape(-1), torch.as_tensor(hi).reshape(-1))
        scale, zero_point = self.qparams_for(lo.contiguous(), hi.contiguous())
        width = (self.max_val - self.min_val) / self.bins
        full = self.histogram > 0
        centres = self.min_val + width * (torch.arange(self.bins, dtype=torch.float32)[full] + 0.5)
        counts = self.histogram[full]
        xs = centres.expand(len(lo), -1).contiguous()  # row k: every bin centre, for range k
        # equation (2) of qlab.primitives per row; torch's kernel equals qlab.fake_quantize bit for bit, and is faster
        xq = torch.fake_quantize_per_channel_affine(
            xs, scale, zero_point.to(torch.int32), 0, self.quant_min, self.quant_max
        )
        return ((xq - xs) ** 2 * counts).sum(dim=1) / counts.sum()

    def chosen_range(self):
        lo_c, hi_c = self.candidates_lo_hi()
        i = j = 0  # start from the full range
        for _ in range(20):
            j_new = int(torch.argmin(self.mse(lo_c[i], hi_c)))  # best hi for this lo
            i_new = int(torch.argmin(self.mse(lo_c, hi_c[j_new])))  # best lo for that hi
            if (i_new, j_new) == (i, j):
                break
            i, j = i_new, j_new
        return lo_c[i].clone(), hi_c[j].clone()

    def extra_repr(self):
        return f"candidates={self.candidates}, smallest={self.smallest}, " + super().extra_repr()
