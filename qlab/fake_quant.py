"""``FakeQuantize``: an observer plus quantize-dequantize in float, the module QAT trains through.
Taught in ``notebooks/04-eager-mode-qat.ipynb``.

The forward pass observes, then fake-quantizes::

         if observer_enabled:   observer(x);  scale, zero_point = observer.calculate_qparams()
    (1)  if fake_quant_enabled: y = (clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
                                otherwise y = x

and the backward pass is the straight-through estimator (STE)::

    (2)  dL/dx = dL/dy * [qmin <= round(x / scale) + zero_point <= qmax]

i.e. rounding is treated as the identity, and clamped values get no gradient.
(1) and (2) are :func:`qlab.fake_quantize`, per tensor or per channel along the
observer's ``ch_axis``; the notebook numbers them the same way.

Twin of ``torch.ao.quantization.FakeQuantize``: same constructor, same buffers
(``fake_quant_enabled``, ``observer_enabled``, ``scale``, ``zero_point``, and
the observer's as ``activation_post_process.*``), same outputs and gradients bit
for bit (``tests/test_fake_quant.py``). It subclasses torch.ao's
``FakeQuantizeBase``, so ``QConfig``, ``prepare_qat``, ``convert`` and
``torch.ao.quantization.disable_observer`` etc. accept it -- with any qlab
observer, including :class:`~qlab.observers.PercentileObserver` and
:class:`~qlab.observers.MSEObserver`. Differences from torch.ao: NaN/inf input
raises ``ValueError``; an empty input is returned without touching the state;
a negative ``ch_axis`` works (torch's per-channel kernel refuses it);
``is_dynamic`` is not supported. The default x86 QAT qconfig uses
``FusedMovingAvgObsFakeQuantize`` instead, a fused C++ kernel that computes the
scale in float64 and nudges the zero point: its scale can differ from
``FakeQuantize``'s (and qlab's) in the last float32 bit.
"""

from __future__ import annotations

import torch
from torch.ao.quantization.fake_quantize import FakeQuantizeBase

from .observers import MovingAverageMinMaxObserver
from .primitives import PerChannel, PerTensor, fake_quantize

__all__ = ["FakeQuantize", "qat_qconfig"]

_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


class FakeQuantize(FakeQuantizeBase):
    """Observe, fake-quantize (1), straight-through gradient (2): see the module docstring.

    ``observer`` is an observer class (or ``Class.with_args(...)``), built with
    ``observer_kwargs``; ``quant_min``/``quant_max`` are passed to it.
    ``enable_observer()``/``disable_observer()`` freeze or unfreeze the range;
    ``enable_fake_quant()``/``disable_fake_quant()`` switch (2) on and off.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, observer=MovingAverageMinMaxObserver, quant_min=None, quant_max=None, **observer_kwargs):
        super().__init__()  # registers fake_quant_enabled = observer_enabled = tensor([1], dtype=uint8)
        if not callable(observer):
            raise TypeError(f"observer must be an observer class or Class.with_args(...), got {observer!r}")
        if quant_min is not None or quant_max is not None:
            observer_kwargs.update(quant_min=quant_min, quant_max=quant_max)
        self.activation_post_process = observer(**observer_kwargs)
        app = self.activation_post_process
        for attr in ("calculate_qparams", "dtype", "qscheme", "quant_min", "quant_max"):
            if not hasattr(app, attr):
                raise TypeError(f"observer must build an observer with .{attr}, got {type(app).__name__}")
        self.quant_min, self.quant_max = app.quant_min, app.quant_max
        self.dtype, self.qscheme = app.dtype, app.qscheme
        self.is_per_channel = app.qscheme in _PER_CHANNEL
        self.ch_axis = app.ch_axis if hasattr(app, "ch_axis") else -1
        self.is_dynamic = False
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int))

    def calculate_qparams(self):
        """The observer's current ``(scale, zero_point)`` (``convert`` calls this)."""
        return self.activation_post_process.calculate_qparams()

    def forward(self, x):
        if x.numel() == 0:
            return x
        if self.observer_enabled[0] == 1:  # update the statistics, then scale and zero point
            self.activation_post_process(x.detach())
            scale, zero_point = self.calculate_qparams()
            self.scale.resize_(scale.shape).copy_(scale)
            self.zero_point.resize_(zero_point.shape).copy_(zero_point)
        if self.fake_quant_enabled[0] == 1:  # (1) forward, (2) backward
            granularity = PerChannel(self.ch_axis) if self.is_per_channel else PerTensor()
            x = fake_quantize(
                x,
                self.scale,
                self.zero_point,
                self.dtype,
                granularity,
                quant_min=self.quant_min,
                quant_max=self.quant_max,
            )
        return x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # scale/zero_point have shape [1] until a per-channel observer gives them [C].
        for name in ("scale", "zero_point"):
            if prefix + name in state_dict:
                getattr(self, name).resize_(state_dict[prefix + name].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return (
            f"fake_quant_enabled={int(self.fake_quant_enabled)}, observer_enabled={int(self.observer_enabled)}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
            f"qscheme={self.qscheme}, ch_axis={self.ch_axis}"
        )


def qat_qconfig(fake_quant, activation_observer, weight_observer):
    """A QAT ``QConfig`` with the x86 defaults' ranges -- 7-bit affine ``quint8`` activations
    (``quant_min=0, quant_max=255, reduce_range=True``), per-channel symmetric ``qint8`` weights -- built from
    any fake-quantize class and observer classes: torch.ao's or qlab's (notebook 04 trains one of each)."""
    import torch.ao.quantization as tq

    return tq.QConfig(
        activation=fake_quant.with_args(observer=activation_observer, quant_min=0, quant_max=255, reduce_range=True),
        weight=fake_quant.with_args(observer=weight_observer, quant_min=-128, quant_max=127, dtype=torch.qint8,
                                    qscheme=torch.per_channel_symmetric),
    )
