"""Which library runs each quantized layer under PyTorch's ``x86`` engine: ``notebooks/07-x86-performance.ipynb``.

The ``x86`` engine is not a third set of kernels. At weight-packing time it hands each quantized layer to
FBGEMM or to oneDNN, by a fixed rule (``should_use_onednn_quant`` in ATen's ``OnednnUtils.h``):

* ``Linear`` -> FBGEMM, always;
* ``Conv`` -> oneDNN when the CPU reports AVX-512 VNNI (cpuinfo, i.e. CPUID -- not what oneDNN is capped to),
  ``groups <= 100``, the weights are symmetric (zero points 0, as the default qconfigs make them) and a
  transposed conv has no output padding; FBGEMM otherwise.

:func:`onednn_kernels` *measures* it: it runs one quantized layer in a fresh process with oneDNN's own
log on (``ONEDNN_VERBOSE=1``) and reads which primitive executed. :func:`x86_route` states the rule for one
layer and :func:`x86_routing` applies it to a whole model, counting multiply-adds per library.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from torch import nn

from ._checks import check_bool, check_choice, check_int, check_tensor

__all__ = ["onednn_kernels", "engine_kernels", "x86_route", "x86_routing", "PROBE_LAYERS"]

_PROBE = """
import warnings
import torch
import torch.ao.nn.quantized as nnq
import qlab
warnings.filterwarnings("ignore")
layer, channels = {layer!r}, {channels}


def per_channel(shape):  # symmetric per-channel int8 weights, as the default qconfigs make them
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    s = w.abs().amax(dim=tuple(range(1, w.dim()))) / 127
    return torch.quantize_per_channel(w, s.double(), torch.zeros(shape[0], dtype=torch.long), 0, torch.qint8)


with qlab.scoped(engine={engine!r}):
    if layer == "linear":
        m = nnq.Linear(channels, channels)
        m.set_weight_bias(per_channel((channels, channels)), None)
        x = torch.quantize_per_tensor(torch.rand(64, channels), 0.02, 0, torch.quint8)
    else:
        groups = channels if layer == "depthwise" else 1
        m = nnq.Conv2d(channels, channels, 3, padding=1, groups=groups)
        m.set_weight_bias(per_channel((channels, channels // groups, 3, 3)), None)
        x = torch.quantize_per_tensor(torch.rand(1, channels, 28, 28), 0.02, 0, torch.quint8)
    print("--- probe starts", flush=True)
    m(x)
    m(x)
"""
PROBE_LAYERS = ("linear", "conv", "depthwise")


def onednn_kernels(
    engine: str, layer: str = "conv", channels: int = 64, timeout: float = 120.0
) -> list[tuple[str, str]]:
    """The oneDNN primitives ``(kind, implementation)`` one quantized layer executes under ``engine``, read from
    oneDNN's own log (``ONEDNN_VERBOSE=1``) in a fresh Python process with this process's environment (so
    ``ONEDNN_MAX_CPU_ISA`` and the other caps apply), e.g. ``("convolution", "brg_conv_fwd:avx10_1_512_amx")``.

    ``layer``: ``"linear"`` (``channels`` -> ``channels``, 64 rows), ``"conv"`` (3x3, ``channels`` in and out,
    28x28) or ``"depthwise"`` (3x3, ``groups=channels``). FBGEMM's kernels do not log, so a layer the
    engine gives to FBGEMM returns ``[]``.
    """
    check_choice("engine", engine, ["x86", "fbgemm", "onednn"])
    check_choice("layer", layer, list(PROBE_LAYERS))
    check_int("channels", channels, 1)
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    code = _PROBE.format(engine=engine, layer=layer, channels=channels)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the {engine} {layer} probe failed:\n{proc.stderr[-2000:]}")
    found = []
    for line in proc.stdout.split("--- probe starts", 1)[-1].splitlines():
        parts = line.split(",")
        if len(parts) > 6 and parts[0] == "onednn_verbose" and parts[2:4] == ["primitive", "exec"]:
            if (parts[5], parts[6]) not in found:
                found.append((parts[5], parts[6]))
    return found


def engine_kernels(engine: str = "x86", layers=(("linear", 256), ("conv", 64), ("depthwise", 64),
                                               ("depthwise", 128))) -> dict[str, str]:
    """Which library runs each probe layer under ``engine``: ``"oneDNN <implementation>"`` or ``"FBGEMM"``
    (nothing in oneDNN's log). Keys like ``"depthwise 128 ch"``."""
    out = {}
    for layer, channels in layers:
        kernels = [impl for kind, impl in onednn_kernels(engine, layer, channels) if kind != "reorder"]
        out[f"{layer} {channels} ch"] = f"oneDNN {kernels[0]}" if kernels else "FBGEMM"
    return out


def x86_route(layer: nn.Module, vnni: bool) -> str | None:
    """``"oneDNN"`` or ``"FBGEMM"``: where the ``x86`` engine sends a quantized version of ``layer`` (symmetric
    weights, as the default qconfigs make them) on a CPU with (``vnni=True``) or without AVX-512 VNNI;
    ``None`` for a module that has no int8 kernel of its own."""
    check_bool("vnni", vnni)
    if isinstance(layer, nn.Linear):
        return "FBGEMM"
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "oneDNN" if vnni and layer.groups <= 100 else "FBGEMM"
    return None


@torch.no_grad()
def x86_routing(model: nn.Module, example: torch.Tensor, vnni: bool) -> dict[str, dict[str, float]]:
    """Apply :func:`x86_route` to every Linear and Conv of ``model`` on ``example`` (one forward pass with
    hooks; the model is not changed). Returns ``{"oneDNN": {"macs", "layers"}, "FBGEMM": {...}}`` plus
    ``"onednn_share"``: oneDNN's fraction of the int8 multiply-adds."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_tensor("example", example)
    check_bool("vnni", vnni)
    out = {"oneDNN": {"macs": 0.0, "layers": 0}, "FBGEMM": {"macs": 0.0, "layers": 0}}

    def hook(mod, inputs, output):
        route = x86_route(mod, vnni)
        out[route]["macs"] += float(output.numel() * mod.weight[0].numel())  # each output: in/groups x kernel
        out[route]["layers"] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if x86_route(m, vnni) is not None]
    was_training = model.training
    try:
        model.eval()
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    total = out["oneDNN"]["macs"] + out["FBGEMM"]["macs"]
    out["onednn_share"] = out["oneDNN"]["macs"] / total if total else 0.0
    return out
