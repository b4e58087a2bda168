"""Equations (1)-(3) of :mod:`qlab.observers`: min/max, moving average, per channel (``notebooks/02``)."""

from __future__ import annotations

import torch

from .._checks import check_axis, check_int
from ._base import (
    _PER_CHANNEL,
    _check_averaging_constant,
    _Observer,
)

__all__ = [
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
]


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
        check_int("ch_axis", ch_axis)
        self.ch_axis = ch_axis
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))

    def _channel_minmax(self, x):
        """Per-channel (min, max) of ``x``: move ``ch_axis`` to the front, flatten the rest."""
        x = self._check_input(x)
        if x.dim() < 2:
            raise ValueError(
                f"x must have at least 2 dimensions for a per-channel observer, got shape {tuple(x.shape)}"
            )
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
