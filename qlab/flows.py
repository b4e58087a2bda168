"""torch.ao's quantization flows in one call each: eager PTQ and QAT (``notebooks/03-eager-mode-ptq.ipynb``,
``notebooks/04-eager-mode-qat.ipynb``), FX PTQ (``notebooks/05-fx-graph-mode.ipynb``, ``07``), and the
figures of 03 and 04.

    fused    = fuse_modules(copy(model), model.fuse_spec())      # Conv-BN-ReLU -> ConvReLU2d
    fused.qconfig = qconfig                                      # which observers
    prepared = prepare(fused)                                    # + observers
    prepared(calibration batches)                                # observe
    int8     = convert(prepared)                                 # int8 modules, packed for the engine

FX graph mode traces the model instead (:func:`fx_ptq`): ``prepare_fx(model, qconfig_mapping,
example, backend_config)``, calibrate, ``convert_fx``.

The engine (``torch.backends.quantized.engine``) matters twice: ``convert`` packs the weights for
it, and the int8 model must run under the same engine. :func:`ptq` and :func:`fx_ptq` convert inside
:func:`qlab.scoped` and return an :class:`OnEngine`, which runs the model under its engine and puts
the caller's engine back afterwards.
"""

from __future__ import annotations

import copy
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ._checks import check_int, check_number
from ._env import engine, scoped

__all__ = [
    "OnEngine",
    "ptq",
    "fx_ptq",
    "qat_finetune",
    "qat_observed",
    "draw_engines",
    "draw_fake_quant_ranges",
    "draw_accuracy",
]

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _check_fig(fig):
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")


def _flow_args(model, calibration, fuse_spec: bool) -> list[torch.Tensor]:
    """The checks every flow makes: an ``nn.Module`` (with ``fuse_spec()`` for eager mode) and a non-empty
    iterable of input tensors, returned as a list."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if fuse_spec and not hasattr(model, "fuse_spec"):
        raise TypeError(
            f"model must provide fuse_spec() (the [conv, bn, relu] names to fuse), got {type(model).__name__}"
        )
    batches = list(calibration)
    if not batches or not all(isinstance(b, torch.Tensor) for b in batches):
        raise TypeError("calibration must be a non-empty iterable of input tensors")
    return batches


class OnEngine(nn.Module):
    """A converted eager-mode model and the quantized engine it was packed for; calling it runs the
    model under that engine (:func:`qlab.scoped`), whatever engine the caller has selected."""

    def __init__(self, model: nn.Module, engine: str):
        super().__init__()
        self.model, self.engine = model, engine

    def forward(self, *args, **kwargs):
        with engine(self.engine):
            return self.model(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"engine={self.engine!r}"


@torch.no_grad()
def ptq(model: nn.Module, calibration: Iterable[torch.Tensor], engine: str = "x86", qconfig=None) -> OnEngine:
    """Eager post-training quantization of a copy of ``model`` (which must provide ``fuse_spec()`` and
    carry ``QuantStub``/``DeQuantStub``): fuse, ``qconfig`` (default: the engine's
    ``get_default_qconfig``), ``prepare``, run every calibration batch, ``convert`` -- all under ``engine``."""
    import torch.ao.quantization as tq

    batches = _flow_args(model, calibration, fuse_spec=True)
    with scoped(engine=engine):
        m = tq.fuse_modules(copy.deepcopy(model).eval(), model.fuse_spec())
        m.qconfig = qconfig if qconfig is not None else tq.get_default_qconfig(engine)
        m = tq.prepare(m)
        for b in batches:
            m(b)
        return OnEngine(tq.convert(m), engine)


@torch.no_grad()
def fx_ptq(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    engine: str = "x86",
    qconfig_mapping=None,
    prepare_custom_config=None,
) -> OnEngine:
    """FX post-training quantization of a copy of ``model`` under ``engine``: ``prepare_fx`` with the
    engine's default ``QConfigMapping`` (unless given) and its ``BackendConfig``, every calibration batch,
    ``convert_fx``. The example input for tracing is the first calibration batch."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.backend_config import get_fbgemm_backend_config, get_qnnpack_backend_config
    from torch.ao.quantization.backend_config.onednn import get_onednn_backend_config
    from torch.ao.quantization.backend_config.x86 import get_x86_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # before backend_config (notebook 05)

    batches = _flow_args(model, calibration, fuse_spec=False)
    backends = {
        "x86": get_x86_backend_config,
        "fbgemm": get_fbgemm_backend_config,
        "onednn": get_onednn_backend_config,
        "qnnpack": get_qnnpack_backend_config,
    }
    if engine not in backends:
        raise ValueError(f"engine must be one of {list(backends)}, got {engine!r}")
    with scoped(engine=engine):
        mapping = qconfig_mapping if qconfig_mapping is not None else get_default_qconfig_mapping(engine)
        prepared = prepare_fx(
            copy.deepcopy(model).eval(),
            mapping,
            (batches[0],),
            prepare_custom_config=prepare_custom_config,
            backend_config=backends[engine](),
        )
        for b in batches:
            prepared(b)
        return OnEngine(convert_fx(prepared, backend_config=backends[engine]()), engine)


def qat_finetune(
    model: nn.Module, loader, watch: Mapping[str, str], *, freeze_at: int, lr: float = 3e-3, seed: int = 0
) -> tuple[float, dict[str, list[tuple[float, float]]]]:
    """One epoch of SGD (momentum 0.9) on a model prepared with ``prepare_qat``, in one thread and seeded
    (float reductions in one fixed order). After ``freeze_at`` steps the observers stop
    (``disable_observer``) and batch-norm uses its running statistics (``freeze_bn_stats``), PyTorch's
    recommended schedule. ``watch``: label -> name of a module whose ``activation_post_process``
    range ``(min_val, max_val)`` is recorded after every step.

    Returns ``(mean training loss, {label: [(lo, hi) per step]})``.
    """
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.quantization as tq

    from .models import train_epoch

    check_int("freeze_at", freeze_at, 1)
    check_number("lr", lr, 0, lo_open=True)
    modules = dict(model.named_modules())
    for label, name in watch.items():
        if name not in modules or not hasattr(modules[name], "activation_post_process"):
            raise ValueError(f"watch[{label!r}] must name a module with an activation fake-quantizer, got {name!r}")
    fqs = {label: modules[name].activation_post_process for label, name in watch.items()}
    history: dict[str, list[tuple[float, float]]] = {label: [] for label in watch}

    def on_step(step, m):
        for label, fq in fqs.items():
            obs = fq.activation_post_process
            history[label].append((obs.min_val.item(), obs.max_val.item()))
        if step + 1 == freeze_at:
            m.apply(tq.disable_observer)
            m.apply(nniqat.freeze_bn_stats)

    with scoped(seed=seed, threads=1):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loss = train_epoch(model, loader, optimizer, on_step=on_step)
    return loss, history


@torch.no_grad()
def qat_observed(model: nn.Module, calibration: Iterable[torch.Tensor], engine: str = "fbgemm"):
    """A fake-quantized model and its int8 conversion with PyTorch's default QAT qconfig for ``engine``, as after
    a QAT run but without the training: fuse for QAT (``model.fuse_spec()``), ``prepare_qat``, every calibration
    batch through the observers, then observers off, batch-norm statistics frozen, ``eval``, and ``convert`` of a
    copy. Returns ``(fake, real)``; both are plain modules (``real``'s weights are packed for ``engine``: run it
    under ``qlab.engine(engine)``). ``model`` is not changed. Notebook 09 compares the two layer by layer."""
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.quantization as tq

    batches = _flow_args(model, calibration, fuse_spec=True)
    with scoped(engine=engine):
        fake = tq.fuse_modules_qat(copy.deepcopy(model).train(), model.fuse_spec())
        fake.qconfig = tq.get_default_qat_qconfig(engine)
        fake = tq.prepare_qat(fake)
        for b in batches:
            fake(b)
        fake.apply(tq.disable_observer)
        fake.apply(nniqat.freeze_bn_stats)
        fake.eval()
        return fake, tq.convert(copy.deepcopy(fake))


def draw_engines(fig: Figure, rows: Sequence[Mapping]) -> dict:
    """Notebook 03's engine comparison: int8 accuracy, size and latency relative to fp32.

    ``rows``: one mapping per engine with ``engine``, ``accuracy``, ``fp32_accuracy``,
    ``size_ratio`` and ``latency_ratio``. Returns ``{"fastest", "best_accuracy"}`` engine names.
    """
    _check_fig(fig)
    if not rows:
        raise ValueError("rows must hold at least one engine")
    names = [r["engine"] for r in rows]
    axes = fig.subplots(1, 3)
    panels = [
        ("top-1 accuracy (%)", [100 * r["accuracy"] for r in rows], 100 * rows[0]["fp32_accuracy"]),
        ("size / fp32", [r["size_ratio"] for r in rows], 1.0),
        ("latency / fp32", [r["latency_ratio"] for r in rows], 1.0),
    ]
    for ax, (label, vals, ref) in zip(axes, panels, strict=False):
        ax.bar(names, vals, color=[_COLOURS[i % len(_COLOURS)] for i in range(len(names))])
        ax.axhline(ref, color="0.2", ls="--", lw=1)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelrotation=45)
    lo = min(panels[0][1] + [panels[0][2]])
    axes[0].set_ylim(max(0.0, lo - 3), 100)
    fastest = names[int(np.argmin([r["latency_ratio"] for r in rows]))]
    best = names[int(np.argmax([r["accuracy"] for r in rows]))]
    return {"fastest": fastest, "best_accuracy": best}


def draw_fake_quant_ranges(
    fig: Figure, history: Mapping[str, Sequence[tuple[float, float]]], *, freeze_at: int | None = None, title: str = ""
) -> dict:
    """The range ``[lo, hi]`` of each fake-quant module, step by step during QAT: one column per
    module, ``hi`` on top and ``lo`` below, each on its own scale so small drifts show; a dashed
    line marks ``freeze_at`` (the step after which the observers were disabled).

    ``history``: name -> list of ``(lo, hi)``, one per training step. Returns
    ``{"steps", "start": name -> (lo, hi), "end": name -> (lo, hi)}``.
    """
    _check_fig(fig)
    if not history:
        raise ValueError("history must hold at least one module")
    names = list(history)
    axes = np.asarray(fig.subplots(2, len(names), sharex=True, squeeze=False))
    for i, name in enumerate(names):
        h = np.asarray(history[name], dtype=float)
        if h.ndim != 2 or h.shape[1] != 2:
            raise ValueError(f"history[{name!r}] must be a list of (lo, hi) pairs")
        steps = np.arange(1, len(h) + 1)
        c = _COLOURS[i % len(_COLOURS)]
        for row, (col, label) in enumerate(((1, "hi"), (0, "lo"))):
            ax = axes[row, i]
            ax.plot(steps, h[:, col], color=c, marker=".", ms=3)
            ax.ticklabel_format(useOffset=False)
            if freeze_at is not None:
                ax.axvline(freeze_at, color="0.4", ls="--", lw=1)
            if i == 0:
                ax.set_ylabel(label)
        axes[0, i].set_title(name, fontsize=9)
        axes[1, i].set_xlabel("step")
    if title:
        fig.suptitle(title, fontsize=10)
    start = {n: tuple(map(float, history[n][0])) for n in names}
    end = {n: tuple(map(float, history[n][-1])) for n in names}
    return {"steps": len(history[names[0]]), "start": start, "end": end}


def draw_accuracy(fig: Figure, results: Mapping[str, float], *, title: str = "") -> dict:
    """Top-1 accuracy (fraction in [0, 1]) per variant as labelled bars. Returns ``{"best", "worst"}``."""
    _check_fig(fig)
    if not results:
        raise ValueError("results must hold at least one entry")
    names = list(results)
    vals = [100 * float(results[n]) for n in names]
    ax = fig.add_subplot()
    bars = ax.bar(names, vals, color=[_COLOURS[i % len(_COLOURS)] for i in range(len(names))])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(max(0.0, min(vals) - 10), 101)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.set_title(title, fontsize=10)
    return {"best": names[int(np.argmax(vals))], "worst": names[int(np.argmin(vals))]}
