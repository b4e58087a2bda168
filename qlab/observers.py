"""Observers: watch calibration data, then choose ``(scale, zero_point)``. Taught in
``notebooks/02-observers-and-calibration.ipynb`` (and used by notebooks 03 and 04).

An observer is an ``nn.Module`` placed after a layer. ``forward(x)`` records a
statistic of ``x`` and returns ``x`` unchanged; ``calculate_qparams()`` turns
the statistic into a range ``[lo, hi]`` and then into quantization parameters
with :func:`qlab.choose_qparams` (equations (3)-(5) of :mod:`qlab.primitives`)::

    (1)  MinMax:            lo = min over all batches of min(x),  hi = max ... of max(x)
    (2)  MovingAverage:     lo <- lo + c * (min(x) - lo)   (first batch: lo = min(x)),  same for hi
    (3)  PerChannel...:     (1) or (2) for every slice x[..., k, ...] along ch_axis
    (4)  Histogram:         lo, hi = the bin range that minimises the L2 quantization
                            error of a 2048-bin running histogram (greedy search)
    (5)  Percentile:        lo, hi = the (100 - p)-th and p-th percentiles of the histogram
    (6)  MSE:               lo, hi = (g_i * min, g_j * max), g a grid of factors in [0.001, 1], (locally) minimising
                            sum_b  n_b * (c_b - fake_quantize(c_b; lo, hi))^2   (n_b, c_b: bin counts, centres)

(1)-(4) re-implement ``torch.ao.quantization``'s ``MinMaxObserver``,
``MovingAverageMinMaxObserver``, ``PerChannelMinMaxObserver``,
``MovingAveragePerChannelMinMaxObserver`` and ``HistogramObserver``:
``calculate_qparams`` returns the same tensors, bit for bit and dtype for dtype
(``tests/test_observers.py`` proves it with hypothesis). They take the same
constructor arguments, keep their statistics in buffers of the same names (so a
torch observer's ``state_dict`` loads into its qlab twin), and subclass
torch.ao's tiny ``ObserverBase`` so that a ``QConfig`` accepts them.
(5) and (6) have no torch.ao twin: they clip outliers for static activations.

Where qlab deliberately differs from torch.ao (it raises instead of returning garbage):

* NaN or inf in ``x``: ``ValueError``, and the observer's state is left as it was.
  torch.ao's min/max observers store NaN/inf and then return a NaN/inf scale; its
  HistogramObserver drops inf values with a warning and fails on NaN inside ``torch.histc``.
* ``calculate_qparams()`` before any data: ``RuntimeError``. torch.ao warns and
  returns scale 1.0, zero point 0.
* A range too wide for float32 (``hi - lo`` overflows): ``ValueError``; torch.ao returns an inf scale.
* Only ``quant_min`` or only ``quant_max`` given: ``ValueError``; torch.ao silently
  ignores a lone bound. A custom range must contain 0 and fit the dtype.
* Symmetric + ``reduce_range`` + quint8: ``ValueError`` for every observer
  (torch.ao refuses it too, except HistogramObserver, whose zero point 128 then
  lies outside ``[0, 127]``).
* Only ``torch.quint8``/``torch.qint8`` and float32 input; a per-channel
  observer refuses a batch whose channel count changed (torch.ao may broadcast)
  and a 1-D batch (torch.ao fails with an ``IndexError``).
* A moving average can end with ``min > max`` by one rounding (a constant batch and
  ``averaging_constant`` near 1): ``ValueError`` from :func:`qlab.choose_qparams`
  where torch.ao raises an ``AssertionError``.

Two torch.ao quirks are reproduced on purpose, because they change results:
with custom ``quant_min``/``quant_max``, ``reduce_range`` halves both bounds;
HistogramObserver's search always assumes 256 destination bins, even with ``reduce_range``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.ao.quantization.observer import ObserverBase

from ._checks import check_axis, check_choice, check_finite, check_float_tensor
from .primitives import choose_qparams

__all__ = [
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "MSEObserver",
    "quantization_error",
    "compare_observers",
]

_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)
_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)
_DTYPE_RANGE = {torch.quint8: (0, 255), torch.qint8: (-128, 127)}


class _Observer(ObserverBase):
    """What every qlab observer shares: argument checks, the integer range and
    ``calculate_qparams() = choose_qparams(*chosen_range())``."""

    _qschemes = _PER_TENSOR

    def __init__(
        self,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        factory_kwargs=None,
        eps=torch.finfo(torch.float32).eps,
        is_dynamic=False,
    ):
        _check_factory_kwargs(factory_kwargs, is_dynamic)
        check_choice("dtype", dtype, list(_DTYPE_RANGE))
        check_choice("qscheme", qscheme, list(self._qschemes))
        if not isinstance(reduce_range, bool):
            raise TypeError(f"reduce_range must be a bool, got {type(reduce_range).__name__}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive float, got {eps!r}")
        super().__init__(dtype=dtype)
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        if qscheme in _SYMMETRIC and reduce_range and dtype == torch.quint8:
            raise ValueError("reduce_range cannot be combined with a symmetric qscheme for torch.quint8 (as in torch.ao)")
        self.has_customized_qrange = quant_min is not None or quant_max is not None
        if self.has_customized_qrange:
            self.quant_min, self.quant_max = _custom_range(dtype, quant_min, quant_max, reduce_range)
        else:
            lo, hi = _DTYPE_RANGE[dtype]
            self.quant_min, self.quant_max = (lo // 2, hi // 2) if reduce_range else (lo, hi)
        self.register_buffer("eps", torch.tensor([float(eps)]))

    def chosen_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range ``[lo, hi]`` this observer quantizes (before it is widened to contain 0)."""
        raise NotImplementedError

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the observed data: :func:`qlab.choose_qparams` of :meth:`chosen_range`."""
        return self.qparams_for(*self.chosen_range())

    def qparams_for(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` this observer's settings give the range ``[lo, hi]``."""
        scale, zero_point = choose_qparams(
            lo,
            hi,
            dtype=self.dtype,
            symmetric=self.qscheme in _SYMMETRIC,
            # a custom range already holds the reduction (torch.ao halves it)
            reduce_range=self.reduce_range and not self.has_customized_qrange,
            quant_min=self.quant_min if self.has_customized_qrange else None,
            quant_max=self.quant_max if self.has_customized_qrange else None,
            eps=float(self.eps),
        )
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(f"the observed range [{lo.tolist()}, {hi.tolist()}] is too wide for a float32 scale")
        return scale, zero_point

    def _not_ready(self):
        return RuntimeError(
            f"{type(self).__name__} has not observed any data: run calibration batches through it "
            "before calculate_qparams() (torch.ao would warn and return scale 1.0, zero point 0)"
        )

    @staticmethod
    def _check_input(x):
        check_float_tensor("x", x)
        return x.detach()

    @staticmethod
    def _check_stats(x_min, x_max):
        """NaN/inf in ``x`` show up in its min/max (``aminmax`` propagates NaN): refuse the batch
        before any state changes, without a second pass over the data."""
        check_finite("x", torch.stack([x_min.reshape(-1), x_max.reshape(-1)]))
        return x_min, x_max

    def extra_repr(self):
        return f"dtype={self.dtype}, qscheme={self.qscheme}, quant_min={self.quant_min}, quant_max={self.quant_max}"


def _check_factory_kwargs(factory_kwargs, is_dynamic):
    """torch.ao passes these through QConfig/prepare_qat; qlab's observers live on the CPU in float32."""
    fk = dict(factory_kwargs or {})
    if fk.get("device") not in (None, "cpu", torch.device("cpu")) or fk.get("dtype") not in (None, torch.float32):
        raise ValueError(f"factory_kwargs may only ask for the CPU and float32, got {factory_kwargs!r}")
    if is_dynamic:
        raise ValueError("is_dynamic=True is not supported: qlab's observers are for static quantization")


def _custom_range(dtype, quant_min, quant_max, reduce_range):
    if quant_min is None or quant_max is None:
        raise ValueError(
            f"give both quant_min and quant_max or neither, got quant_min={quant_min}, quant_max={quant_max}"
        )
    lo, hi = _DTYPE_RANGE[dtype]
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise ValueError(f"{name} must lie in the {dtype} range [{lo}, {hi}], got {v}")
    if not quant_min <= 0 <= quant_max or quant_min >= quant_max:
        raise ValueError(f"need quant_min <= 0 <= quant_max and quant_min < quant_max, got [{quant_min}, {quant_max}]")
    if reduce_range:  # torch.ao's rule: the custom bounds are halved
        quant_min, quant_max = quant_min // 2, quant_max // 2
        if quant_min >= quant_max:
            raise ValueError(f"reduce_range halves the custom range to the empty [{quant_min}, {quant_max}]")
    return quant_min, quant_max


# ----------------------------------------------------------------------------- (1), (2)


class MinMaxObserver(_Observer):
    """Equation (1): the running minimum and maximum of everything seen.

    Twin of ``torch.ao.quantization.MinMaxObserver`` (bit for bit). One outlier
    sets the range for good: notebook 02 shows the price in resolution.
    """

    def __init__(
        self,
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
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x):
        if x.numel() == 0:
            return x
        x_min, x_max = self._check_stats(*torch.aminmax(self._check_input(x)))
        self.min_val.copy_(torch.min(x_min, self.min_val))
        self.max_val.copy_(torch.max(x_max, self.max_val))
        return x

    def chosen_range(self):
        if self.min_val == float("inf"):
            raise self._not_ready()
        return self.min_val.clone(), self.max_val.clone()

    def reset_min_max_vals(self):
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Equation (2): an exponential moving average of each batch's min and max,
    ``lo <- lo + c * (min(x) - lo)`` with ``c = averaging_constant`` (first batch: ``lo = min(x)``).

    Twin of ``torch.ao.quantization.MovingAverageMinMaxObserver`` (bit for bit).
    QAT uses it: the range follows the activations as the weights train (notebook 04).
    """

    def __init__(
        self,
        averaging_constant=0.01,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=torch.finfo(torch.float32).eps,
        is_dynamic=False,
        factory_kwargs=None,
    ):
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        self.averaging_constant = _check_averaging_constant(averaging_constant)

    def forward(self, x):
        if x.numel() == 0:
            return x
        x_min, x_max = self._check_stats(*torch.aminmax(self._check_input(x)))
        if self.min_val == float("inf"):  # first batch
            lo, hi = x_min, x_max
        else:
            c = self.averaging_constant
            lo = self.min_val + c * (x_min - self.min_val)
            hi = self.max_val + c * (x_max - self.max_val)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        return x

    def extra_repr(self):
        return f"averaging_constant={self.averaging_constant}, " + super().extra_repr()


def _check_averaging_constant(c):
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
        raise ValueError(f"averaging_constant must be a float in (0, 1], got {c!r}")
    return c


# ----------------------------------------------------------------------------- (3)


class PerChannelMinMaxObserver(_Observer):
    """Equation (3) with (1): one running min/max per slice along ``ch_axis``.

    Twin of ``torch.ao.quantization.PerChannelMinMaxObserver`` (bit for bit);
    the default observer of conv/linear weights (``ch_axis=0``: output channels).
    ``min_val``/``max_val`` start empty and take shape ``[C]`` at the first batch.
    """

    _qschemes = _PER_CHANNEL

    def __init__(
        self,
        ch_axis=0,
        dtype=torch.quint8,
        qscheme=torch.per_channel_affine,
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        factory_kwargs=None,
        eps=torch.finfo(torch.float32).eps,
        is_dynamic=False,
    ):
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        if isinstance(ch_axis, bool) or not isinstance(ch_axis, int):
            raise TypeError(f"ch_axis must be an int, got {type(ch_axis).__name__}")
        self.ch_axis = ch_axis
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))

    def _channel_minmax(self, x):
        """Per-channel (min, max) of ``x``: move ``ch_axis`` to the front, flatten the rest."""
        x = self._check_input(x)
        if x.dim() < 2:
            raise ValueError(f"x must have at least 2 dimensions for a per-channel observer, got shape {tuple(x.shape)}")
        axis = check_axis("ch_axis", self.ch_axis, x.dim())
        if self.min_val.numel() and x.shape[axis] != self.min_val.numel():
            raise ValueError(
                f"x has {x.shape[axis]} channels along ch_axis={self.ch_axis}, "
                f"but this observer has seen {self.min_val.numel()}"
            )
        dims = list(range(x.dim()))
        dims[0], dims[axis] = axis, 0
        return self._check_stats(*torch.aminmax(torch.flatten(x.permute(dims), start_dim=1), dim=1))

    def _store(self, lo, hi):
        self.min_val.resize_(lo.shape).copy_(lo)
        self.max_val.resize_(hi.shape).copy_(hi)

    def forward(self, x):
        if x.numel() == 0:
            return x
        x_min, x_max = self._channel_minmax(x)
        if self.min_val.numel():
            x_min, x_max = torch.min(x_min, self.min_val), torch.max(x_max, self.max_val)
        self._store(x_min, x_max)
        return x

    def chosen_range(self):
        if self.min_val.numel() == 0:
            raise self._not_ready()
        return self.min_val.clone(), self.max_val.clone()

    def reset_min_max_vals(self):
        self.min_val = torch.tensor([])
        self.max_val = torch.tensor([])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The statistics take their shape [C] from the data: let a saved state set it.
        for name in ("min_val", "max_val"):
            if prefix + name in state_dict:
                getattr(self, name).resize_(state_dict[prefix + name].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return f"ch_axis={self.ch_axis}, " + super().extra_repr()


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Equation (3) with (2): a moving average of each channel's min and max.

    Twin of ``torch.ao.quantization.MovingAveragePerChannelMinMaxObserver`` (bit
    for bit); the QAT default for weights.
    """

    def __init__(
        self,
        averaging_constant=0.01,
        ch_axis=0,
        dtype=torch.quint8,
        qscheme=torch.per_channel_affine,
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=torch.finfo(torch.float32).eps,
        is_dynamic=False,
        factory_kwargs=None,
    ):
        super().__init__(ch_axis, dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic)
        self.averaging_constant = _check_averaging_constant(averaging_constant)

    def forward(self, x):
        if x.numel() == 0:
            return x
        x_min, x_max = self._channel_minmax(x)
        if self.min_val.numel():
            c = self.averaging_constant
            x_min = self.min_val + c * (x_min - self.min_val)
            x_max = self.max_val + c * (x_max - self.max_val)
        self._store(x_min, x_max)
        return x


# ----------------------------------------------------------------------------- (4)


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
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
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
        l, r = start_bin, end_bin
        while l < end_bin and csum[l] < lo_t:
            l += 1
        while r > start_bin and csum[r] > hi_t:
            r -= 1
        next_start, next_end = start_bin, end_bin
        if l - start_bin > end_bin - r:  # cut on the side that moves further
            next_start, alpha = l, next_alpha
        else:
            next_end, beta = r, next_beta
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


# ----------------------------------------------------------------------------- (5), (6)


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
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50 < percentile <= 100:
            raise ValueError(f"percentile must be a number in (50, 100], got {percentile!r}")
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
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
            raise ValueError(f"candidates must be an int >= 2, got {candidates!r}")
        if isinstance(smallest, bool) or not isinstance(smallest, (int, float)) or not 0 < smallest < 1:
            raise ValueError(f"smallest must be a float in (0, 1), got {smallest!r}")
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
        xq = torch.fake_quantize_per_channel_affine(xs, scale, zero_point.to(torch.int32), 0, self.quant_min, self.quant_max)
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


# ----------------------------------------------------------------------------- measuring observers


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
