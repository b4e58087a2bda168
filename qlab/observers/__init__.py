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

from .clipping import MSEObserver, PercentileObserver
from .histogram import HistogramObserver
from .measure import compare_observers, quantization_error, report_table
from .minmax import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)

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
    "report_table",
]
