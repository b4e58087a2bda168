"""Fake-quantized vs converted (real int8) outputs: the seed report and every source of difference.
Taught in ``notebooks/09-fake-vs-real-mismatch.ipynb``.

The seed: a 1x1 Conv-ReLU (3 -> 3 channels) with weights ``k * I`` and zero
bias, input codes ``0..255`` (the ramp ``arange(256) / 255``). The QAT
(fake-quant) model gives codes ``0..255``; the converted model gives
``..., 126, 127, 127, 128, ..., 254``.

Why: ``FusedMovingAvgObsFakeQuantize`` does not use the ``scale`` buffer the
user wrote. Its kernel recomputes scale and zero point from the observer's
``min_val``/``max_val`` on every call (observer disabled or not) with fbgemm's
``ChooseQuantizationParams`` (:func:`fused_kernel_qparams`), while ``convert``
calls the observer's ``calculate_qparams()`` (:func:`observer_qparams`). For a
symmetric qscheme the two formulas differ::

    kernel:    min < 0 < max:  scale = max(-min / 128, max / 127), zero_point 0
               otherwise:      the *affine* formula: scale = (max - min) / 255, zero_point = qmin (-128 when min = 0)
    observer:  scale = max(-min, max) / 127.5, zero_point 0

The seed's weight range is ``[0, k]``: the fake model quantizes ``k`` with
scale ``k/255`` and zero point -128 (code 127 -> exactly ``k``), the converted
one with scale ``2k/255``: ``k / (2k/255) = 127.5`` rounds to 128 and clamps to
127, so the real weight is ``254/255 k`` and output code ``i`` becomes
``round(i * 254/255)``: ``i`` for ``i <= 127``, ``i - 1`` from 128 on.

The other sources of difference are measured one by one in :mod:`qlab.mismatch_sources`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.ao.quantization as tq
from torch import nn

from ._checks import check_choice, check_number, check_tensor
from ._env import scoped

__all__ = [
    "SeedConvReLU",
    "seed_qconfig",
    "seed_input",
    "set_reported_qparams",
    "set_qparams_from_observers",
    "SeedRun",
    "run_seed",
    "output_codes",
    "fused_kernel_qparams",
    "observer_qparams",
    "fake_quant_qparams_used",
    "SourceResult",
    "lsb_stats",
]

# ---------------------------------------------------------------- the seed


class SeedConvReLU(nn.Module):
    """The report's ``FooConv1x1``: quant -> Conv2d(3, 3, 1) -> ReLU -> dequant, weights ``k * I``, bias 0."""

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv = nn.Conv2d(3, 3, 1, 1)
        self.act = nn.ReLU()
        self.dequant = tq.DeQuantStub()
        with torch.no_grad():
            self.conv.weight.copy_(float(k) * torch.eye(3).reshape(3, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.dequant(self.act(self.conv(self.quant(x))))


def seed_qconfig(fake_quant: str = "fused", weight_quant_min: int = -128) -> tq.QConfig:
    """The report's qconfig, rebuilt from its prose: moving-average min/max fake quants,
    per-tensor affine quint8 activations, per-tensor symmetric qint8 weights.

    ``fake_quant``: ``"fused"`` (``FusedMovingAvgObsFakeQuantize``, as reported) or
    ``"plain"`` (``FakeQuantize``). ``weight_quant_min``: -128 (as reported) or -127
    (the restricted symmetric range, whose scale ``max/127`` represents ``max`` exactly).
    """
    check_choice("fake_quant", fake_quant, ["fused", "plain"])
    check_choice("weight_quant_min", weight_quant_min, [-128, -127])
    cls = tq.FusedMovingAvgObsFakeQuantize if fake_quant == "fused" else tq.FakeQuantize
    act = cls.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    wt = cls.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=weight_quant_min,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric,
    )
    return tq.QConfig(activation=act, weight=wt)


def seed_input() -> torch.Tensor:
    """The report's input: ``arange(0, 256).repeat(1, 3, 256, 1) / 255`` (every row is the ramp 0..255 / 255)."""
    return torch.arange(0, 256).repeat(1, 3, 256, 1) / 255.0


def set_reported_qparams(prepared: nn.Module, k: float) -> None:
    """What the report's ``set_qconfig_params`` writes: ``.scale`` on the fake quants and
    ``min_val``/``max_val`` on the observers (and, having no effect, on two fake quants)."""
    conv, quant = prepared.conv, prepared.quant
    t = torch.tensor
    conv.weight_fake_quant.scale = torch.Tensor([2.0 * k / 255.0])  # "symmetric, hence 2k"
    conv.weight_fake_quant.activation_post_process.min_val = t(0.0)
    conv.weight_fake_quant.activation_post_process.max_val = t(k)
    conv.activation_post_process.scale = torch.Tensor([k / 255.0])
    conv.activation_post_process.min_val = t(0.0)  # a new plain attribute: nothing reads it
    conv.activation_post_process.max_val = t(k)
    conv.activation_post_process.activation_post_process.min_val = t(0.0)
    conv.activation_post_process.activation_post_process.max_val = t(k)
    quant.activation_post_process.scale = torch.Tensor([1.0 / 255.0])
    quant.activation_post_process.activation_post_process.min_val = t(0.0)
    quant.activation_post_process.activation_post_process.max_val = t(1.0)


def set_qparams_from_observers(prepared: nn.Module, ranges: dict[str, tuple[float, float]]) -> None:
    """The one-source-of-truth way: write each observer's ``min_val``/``max_val`` (what ``convert``
    reads), then copy the observer's ``calculate_qparams()`` into the fake quant's buffers.

    ``ranges``: fake-quant module name -> ``(min, max)``, e.g. ``{"conv.weight_fake_quant": (0, k)}``.
    """
    mods = dict(prepared.named_modules())
    for name, (lo, hi) in ranges.items():
        if name not in mods or not isinstance(mods[name], tq.FakeQuantizeBase):
            raise ValueError(f"ranges keys must name fake-quant modules of the model, got {name!r}")
        fq = mods[name]
        fq.activation_post_process.min_val = torch.tensor(float(lo))
        fq.activation_post_process.max_val = torch.tensor(float(hi))
        s, z = fq.calculate_qparams()
        fq.scale = s.clone()
        fq.zero_point = z.to(fq.zero_point.dtype).clone()


def output_codes(y: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The integer codes of a fake-quantized float output: ``round(y / scale) + zero_point`` (uint8).

    (The report truncated ``y * 255`` with ``.to(torch.uint8)``, which turns ``128.99998`` into 128.)
    """
    check_tensor("y", y)
    return (torch.round(y.detach() / float(scale)) + int(zero_point)).clamp(0, 255).to(torch.uint8)


@dataclass
class SeedRun:
    """One run of the seed: both models, their outputs and the first row of codes of channel 0."""

    prepared: nn.Module
    converted: nn.Module
    fake_out: torch.Tensor
    real_out: torch.Tensor
    fake_codes: torch.Tensor
    real_codes: torch.Tensor

    @property
    def fake_row(self) -> list[int]:
        return self.fake_codes[0, 0, 0].tolist()

    @property
    def real_row(self) -> list[int]:
        return self.real_codes[0, 0, 0].tolist()


def run_seed(
    k: float = 1.0,
    *,
    engine: str = "fbgemm",
    fake_quant: str = "fused",
    weight_quant_min: int = -128,
    qparams: str = "reported",
    x: torch.Tensor | None = None,
) -> SeedRun:
    """Build, prepare (QAT), set qparams, run and convert the seed model.

    ``qparams="reported"`` uses :func:`set_reported_qparams`; ``"observers"`` uses
    :func:`set_qparams_from_observers` with the same ranges (input [0, 1], weight [0, k],
    output [0, k]). The report's steps are kept: fuse, ``prepare_qat``, ``disable_observer``,
    eval, forward; the dequant stub becomes ``Identity`` before ``convert``.
    """
    check_choice("engine", engine, [e for e in torch.backends.quantized.supported_engines if e != "none"])
    check_choice("qparams", qparams, ["reported", "observers"])
    k = check_number("k", k, 0, lo_open=True)
    with scoped(engine=engine):
        return _run_seed(k, fake_quant, weight_quant_min, qparams, seed_input() if x is None else x)


def _run_seed(k, fake_quant, weight_quant_min, qparams, x) -> SeedRun:
    model = SeedConvReLU(k)
    model.qconfig = seed_qconfig(fake_quant, weight_quant_min)
    model.quant.qconfig = model.qconfig
    tq.fuse_modules(model, [["conv", "act"]], inplace=True)
    prepared = tq.prepare_qat(model.train())
    prepared.apply(tq.disable_observer).eval()
    if qparams == "reported":
        set_reported_qparams(prepared, k)
    else:
        set_qparams_from_observers(
            prepared,
            {
                "quant.activation_post_process": (0.0, 1.0),
                "conv.weight_fake_quant": (0.0, k),
                "conv.activation_post_process": (0.0, k),
            },
        )
    with torch.no_grad():
        fake_out = prepared(x)
    prepared.dequant = nn.Identity()
    converted = tq.convert(copy.deepcopy(prepared), inplace=False)
    with torch.no_grad():
        real_out = converted(x)
    fq_out = prepared.conv.activation_post_process
    fake_codes = output_codes(fake_out, float(fq_out.scale), int(fq_out.zero_point))
    return SeedRun(prepared, converted, fake_out, real_out, fake_codes, real_out.int_repr())


# ------------------------------------------------- where the qparams come from


_SMALL_SCALE = float(torch.tensor(6.1e-5, dtype=torch.float32))


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def fused_kernel_qparams(
    min_val: float, max_val: float, quant_min: int, quant_max: int, symmetric: bool
) -> tuple[float, int]:
    """The qparams ``torch.fused_moving_avg_obs_fake_quant`` computes from a range (fbgemm's
    ``ChooseQuantizationParams``, as built into this PyTorch): the formula in this module's
    docstring. ``tests/test_mismatch.py`` checks it against the kernel with hypothesis."""
    lo, hi = _f32(min_val), _f32(max_val)
    straddles = symmetric and lo < 0 < hi
    if straddles:  # symmetric: the wider of the two sides decides, with 128 codes below 0 and 127 above
        sym_min, sym_max = -((quant_max - quant_min) // 2 + 1), (quant_max - quant_min) // 2
        m = max(abs(_f32(lo / sym_min)), abs(_f32(hi / sym_max)))  # float32 divisions, as in C++
        lo, hi = _f32(m * sym_min), _f32(m * sym_max)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (quant_max - quant_min)
    f = torch.tensor(scale, dtype=torch.float32)
    if f == 0 or torch.isinf(1.0 / f):  # C++: float(scale) == 0.0f || isinf(1.0f / float(scale))
        scale = 0.1
    if scale < _SMALL_SCALE:  # tiny ranges: the scale is raised to 6.1e-5 and the range widened to match
        amp = _SMALL_SCALE / _f32(scale)
        if lo == 0.0:
            hi = _f32(_SMALL_SCALE * (quant_max - quant_min))
        elif hi == 0.0:
            lo = _f32(-_SMALL_SCALE * (quant_max - quant_min))
        else:
            lo, hi = _f32(lo * amp), _f32(hi * amp)
        scale = _SMALL_SCALE
    if straddles:
        zp0 = (quant_min + quant_max) / 2
    else:  # the affine formula, from whichever end adds the smaller terms
        from_min, from_max = quant_min - lo / scale, quant_max - hi / scale
        err_min = abs(quant_min) + abs(lo / scale)
        err_max = abs(quant_max) + abs(hi / scale)
        zp0 = from_min if err_min < err_max else from_max
    zp = quant_min if zp0 < quant_min else quant_max if zp0 > quant_max else int(round(zp0))  # round: half to even
    return _f32(scale), zp


def observer_qparams(fq: tq.FakeQuantizeBase) -> tuple[float, int]:
    """What ``convert`` reads: the observer's ``calculate_qparams()`` from its ``min_val``/``max_val``."""
    s, z = fq.calculate_qparams()
    return float(s.reshape(-1)[0]), int(z.reshape(-1)[0])


@torch.no_grad()
def fake_quant_qparams_used(fq: tq.FakeQuantizeBase, x: torch.Tensor) -> tuple[float, int]:
    """The scale and zero point a fake-quant module's forward really applies to ``x``
    (run on a copy, so the module itself is not changed)."""
    probe = copy.deepcopy(fq)
    probe(x.detach().clone())
    return float(probe.scale.reshape(-1)[0]), int(probe.zero_point.reshape(-1)[0])


# ------------------------------------------------------ measuring differences


@dataclass
class SourceResult:
    """One isolated source of fake-vs-real difference, measured in LSBs of the output scale."""

    name: str
    n: int
    n_diff: int
    max_lsb: float
    mean_lsb: float
    detail: dict = field(default_factory=dict)

    @property
    def pct_diff(self) -> float:
        return 100.0 * self.n_diff / max(self.n, 1)

    def line(self) -> str:
        return (
            f"{self.name:<26} {self.n_diff:>6} / {self.n:<6} codes differ ({self.pct_diff:6.2f} %), "
            f"max {self.max_lsb:g} LSB, mean {self.mean_lsb:.4f} LSB"
        )


def lsb_stats(name: str, a: torch.Tensor, b: torch.Tensor, scale: float = 1.0, **detail) -> SourceResult:
    """Compare two outputs in LSBs: ``|a - b| / scale`` (codes: scale 1), rounded to 1e-3 LSB
    (float32 outputs on the same grid can differ by ~1e-5 LSB of rounding noise)."""
    d = ((a.to(torch.float64) - b.to(torch.float64)).abs() / float(scale)).flatten()
    d = torch.round(d * 1e3) / 1e3
    return SourceResult(
        name, d.numel(), int((d > 0).sum()), float(d.max()) if d.numel() else 0.0, float(d.mean()), dict(detail)
    )
