"""What every qlab observer shares: the constructor's checks, the integer range, and
``calculate_qparams() = choose_qparams(*chosen_range())`` (:mod:`qlab.observers`)."""

from __future__ import annotations

import torch
from torch.ao.quantization.observer import ObserverBase

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_int,
    check_number,
)
from ..primitives import INT_RANGES, choose_qparams

_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)
_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)
_DTYPE_RANGE = {d: INT_RANGES[d] for d in (torch.quint8, torch.qint8)}


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
        check_number("eps", eps, 0, lo_open=True)
        super().__init__(dtype=dtype)
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        if qscheme in _SYMMETRIC and reduce_range and dtype == torch.quint8:
            raise ValueError(
                "reduce_range cannot be combined with a symmetric qscheme for torch.quint8 (as in torch.ao)"
            )
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
        check_int(name, v)
        if not lo <= v <= hi:
            raise ValueError(f"{name} must lie in the {dtype} range [{lo}, {hi}], got {v}")
    if not quant_min <= 0 <= quant_max or quant_min >= quant_max:
        raise ValueError(f"need quant_min <= 0 <= quant_max and quant_min < quant_max, got [{quant_min}, {quant_max}]")
    if reduce_range:  # torch.ao's rule: the custom bounds are halved
        quant_min, quant_max = quant_min // 2, quant_max // 2
        if quant_min >= quant_max:
            raise ValueError(f"reduce_range halves the custom range to the empty [{quant_min}, {quant_max}]")
    return quant_min, quant_max


def _check_averaging_constant(c):
    check_number("averaging_constant", c, 0, 1, lo_open=True)
    return c
