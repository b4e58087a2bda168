"""Equation (4) of :mod:`qlab.observers`: PyTorch's histogram observer and its greedy L2 search (``notebooks/02``)."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ._base import _Observer

__all__ = ["HistogramObserver"]


class HistogramObserver(_Observer):
    """Equation (4): a running histogram, then PyTorch's greedy L2 search for ``[lo, hi]``.

    Twin of ``torch.ao.quantization.HistogramObserver`` (bit for bit), the
    default activation observer of the x86, fbgemm, onednn and qnnpack qconfigs.

    *Recording.* The first batch sets ``[min_val, max_val]`` and a ``bins``-bin
    histogram over it. A later batch that widens the range re-bins the old
    histogram into the new range: each old bin is split into 16 equal parts
    whose mass goes to the new bin holding the part's centre (:func:`_rebin`).

    *Search.* Starting from all bins, repeatedly drop the one end bin (left or
    right) that holds less data -- in quantile steps of ``1e-5`` -- and keep the
    narrower range while the estimated L2 error of quantizing the histogram into
    256 levels does not grow; stop at the first increase (:func:`_l2_search`).
    The error of a source bin whose values (assumed uniform) fall into a
    destination bin centred at ``m`` is ``density * integral (x - m)^2 dx``.
    """

    def __init__(
        self,
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
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        check_int("bins", bins, 1)
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins))
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x_orig):
        if x_orig.numel() == 0:
            return x_orig
        x = self._check_input(x_orig)
        x_min, x_max = self._check_stats(*torch.aminmax(x))
        if self.min_val == float("inf"):  # first batch: its own range
            self.min_val.copy_(x_min)
            self.max_val.copy_(x_max)
            self.histogram.copy_(torch.histc(x, self.bins, min=x_min, max=x_max))
            return x_orig
        new_min, new_max = torch.min(self.min_val, x_min), torch.max(self.max_val, x_max)
        hist = torch.histc(x, self.bins, min=new_min, max=new_max)
        if new_min == self.min_val and new_max == self.max_val:
            hist = self.histogram + hist
        elif self.min_val == self.max_val:  # everything so far was one value: put it in its bin
            old = torch.histc(self.min_val, self.bins, min=new_min, max=new_max)
            hist = old * torch.sum(self.histogram) + hist
        else:
            hist = hist + _rebin(self.histogram, self.min_val, self.max_val, new_min, new_max)
        self.histogram.copy_(hist)
        self.min_val.copy_(new_min)
        self.max_val.copy_(new_max)
        return x_orig

    def _check_ready(self):
        if self.min_val == float("inf"):
            raise self._not_ready()

    def chosen_range(self):
        self._check_ready()
        start_bin, end_bin = _l2_search(self.histogram, self.min_val, self.max_val, dst_nbins=256)
        bin_width = (self.max_val - self.min_val) / self.bins
        return self.min_val + bin_width * start_bin, self.min_val + bin_width * (end_bin + 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "histogram"
        if key in state_dict and state_dict[key].shape != self.histogram.shape:
            raise ValueError(f"the saved histogram has {state_dict[key].numel()} bins, this observer {self.bins}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return f"bins={self.bins}, " + super().extra_repr()


def _rebin(hist, old_min, old_max, new_min, new_max, upsample=16):
    """Move a histogram over ``[old_min, old_max]`` into the same number of bins over
    the wider ``[new_min, new_max]``: split every old bin into ``upsample`` parts of
    equal mass and drop each part into the new bin that holds its centre."""
    bins = hist.numel()
    parts = hist.repeat_interleave(upsample) / upsample
    part_width = (old_max - old_min) / (bins * upsample)
    centres = torch.linspace(old_min, old_max, bins * upsample + 1)[:-1] + 0.5 * part_width
    edges = torch.linspace(new_min, new_max, bins + 1)
    idx = (torch.bucketize(centres, edges, right=True) - 1).clamp(0, bins - 1)
    return torch.bincount(idx, weights=parts, minlength=bins)


def _l2_search(hist, min_val, max_val, dst_nbins=256, stepsize=1e-5):
    """PyTorch's ``_non_linear_param_search``: the ``(start_bin, end_bin)`` kept by the greedy search.

    The quantile thresholds are compared in float32, as PyTorch compares a float32
    tensor with a Python float; the cumulative sums are read once into a list.
    """
    bins = hist.numel()
    total = torch.sum(hist).item()
    csum = torch.cumsum(hist, dim=0).tolist()
    bin_width = (max_val.item() - min_val.item()) / bins
    alpha, beta = 0.0, 1.0  # the quantiles cut off on the left and kept on the right
    start_bin, end_bin = 0, bins - 1
    norm_min = float("inf")
    while alpha < beta:
        next_alpha, next_beta = alpha + stepsize, beta - stepsize
        lo_t, hi_t = float(np.float32(next_alpha * total)), float(np.float32(next_beta * total))
        left, right = start_bin, end_bin
        while left < end_bin and csum[left] < lo_t:
            left += 1
        while right > start_bin and csum[right] > hi_t:
            right -= 1
        next_start, next_end = start_bin, end_bin
        if left - start_bin > end_bin - right:  # cut on the side that moves further
            next_start, alpha = left, next_alpha
        else:
            next_end, beta = right, next_beta
        if (next_start, next_end) == (start_bin, end_bin):
            continue
        norm = _l2_error(hist, bin_width, next_start, next_end, dst_nbins)
        if norm > norm_min:
            break
        norm_min, start_bin, end_bin = norm, next_start, next_end
    return start_bin, end_bin


def _cube_integral(begin, end, density):
    """``density * integral_begin^end x^2 dx``: the L2 error of uniform values around a level at 0."""
    return density * ((end * end * end - begin * begin * begin) / 3)


def _l2_error(hist, bin_width, start_bin, end_bin, dst_nbins):
    """Estimated L2 error of quantizing ``hist`` with the range of bins ``start_bin..end_bin``
    (PyTorch's ``_compute_quantization_error``, operation for operation)."""
    bins = hist.numel()
    dst_width = bin_width * (end_bin - start_bin + 1) / dst_nbins
    if dst_width == 0.0:
        return 0.0
    src_begin = (torch.arange(bins) - start_bin) * bin_width  # source bin edges, from the range start
    src_end = src_begin + bin_width
    dst_of_begin = torch.clamp(torch.div(src_begin, dst_width, rounding_mode="floor"), 0, dst_nbins - 1)
    dst_of_end = torch.clamp(torch.div(src_end, dst_width, rounding_mode="floor"), 0, dst_nbins - 1)
    density = hist / bin_width
    half = dst_width / 2
    norm = torch.zeros(bins)
    # the part of the source bin in its first destination bin ...
    norm += _cube_integral(src_begin - (dst_of_begin + 0.5) * dst_width, torch.ones(bins) * half, density)
    # ... the destination bins it covers completely ...
    norm += (dst_of_end - dst_of_begin - 1) * _cube_integral(torch.tensor(-half), torch.tensor(half), density)
    # ... and the part in its last destination bin
    norm += _cube_integral(torch.tensor(-half), src_end - (dst_of_end * dst_width + half), density)
    return norm.sum().item()
