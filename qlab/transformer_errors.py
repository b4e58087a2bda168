"""Why an int8 transformer loses accuracy, measured: activation outlier channels, and each quantization choice
emulated on its own. Taught in ``notebooks/10-real-transformer-int8.ipynb`` (section 3).

:func:`emulate` replaces each chosen ``nn.Linear`` by :class:`FakeQuantLinear`, which fake-quantizes its input
and its weight with :func:`qlab.fake_quantize` and runs the float Linear on the result -- one factor at a
time, with no kernel in the way. The activation schemes (``x`` the Linear's input ``[N, C]``, all tokens)::

    "u7"      per tensor, uint8 codes 0..127 (torch.ao dynamic: reduce_range)    s = (max⁺ - min⁻) / 127
    "u8"      per tensor, uint8 codes 0..255                                     s = (max⁺ - min⁻) / 255
    "token"   per token (row), symmetric int8 (torchao dynamic)                   s_n = max_c |x_nc| / 127.5

and the weight schemes ``"tensor"`` (one symmetric int8 scale per matrix, torch.ao's default) and
``"channel"`` (one per output row), ``s = max|W| / 127.5``. ``None`` leaves that side in float.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from ._checks import check_choice
from .primitives import PerChannel, choose_qparams, fake_quantize

__all__ = [
    "ACT_SCHEMES",
    "WEIGHT_SCHEMES",
    "GROUPS",
    "FakeQuantLinear",
    "emulate",
    "group_of",
    "linear_inputs",
    "channel_maxima",
    "outlier_rows",
    "draw_channel_ranges",
]

ACT_SCHEMES = [None, "u7", "u8", "token"]
WEIGHT_SCHEMES = [None, "tensor", "channel"]

#: The four kinds of Linear in a BERT layer, by a regex on the module name.
GROUPS = {
    "q/k/v": r"attention\.self\.(query|key|value)$",
    "attention out": r"attention\.output\.dense$",
    "FFN up": r"intermediate\.dense$",
    "FFN down": r"layer\.\d+\.output\.dense$",
}


def group_of(name: str) -> str | None:
    """Which of :data:`GROUPS` a Linear's module name belongs to (``None``: none, e.g. the pooler)."""
    return next((g for g, rx in GROUPS.items() if re.search(rx, name)), None)


def _fq_act(x: torch.Tensor, scheme: str) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    if scheme == "token":
        amax = flat.abs().amax(1).clamp(min=1e-12)
        s = (amax / 127.5).float()
        out = fake_quantize(flat, s, torch.zeros_like(s, dtype=torch.int32), torch.qint8, PerChannel(0))
    else:
        s, z = choose_qparams(flat.min(), flat.max(), dtype=torch.quint8, reduce_range=scheme == "u7")
        out = fake_quantize(flat, s, z, torch.quint8)
    return out.reshape(x.shape)


def _fq_weight(w: torch.Tensor, scheme: str) -> torch.Tensor:
    if scheme == "tensor":
        s, z = choose_qparams(w.min(), w.max(), dtype=torch.qint8, symmetric=True)
        return fake_quantize(w, s, z, torch.qint8)
    s, z = choose_qparams(w.amin(1), w.amax(1), dtype=torch.qint8, symmetric=True)
    return fake_quantize(w, s, z, torch.qint8, PerChannel(0))


class FakeQuantLinear(nn.Module):
    """An ``nn.Linear`` whose input (scheme ``act``) and weight (scheme ``weight``) are fake-quantized."""

    def __init__(self, linear: nn.Linear, act: str | None, weight: str | None):
        super().__init__()
        check_choice("act", act, ACT_SCHEMES)
        check_choice("weight", weight, WEIGHT_SCHEMES)
        self.linear, self.act, self.weight_scheme = linear, act, weight
        w = linear.weight.detach()
        self.register_buffer("w", _fq_weight(w, weight) if weight else w.clone())

    def forward(self, x):
        if self.act:
            x = _fq_act(x, self.act)
        return nn.functional.linear(x, self.w, self.linear.bias)

    def extra_repr(self):
        return f"act={self.act}, weight={self.weight_scheme}"


@torch.no_grad()
def emulate(model: nn.Module, act: str | None, weight: str | None, groups=None) -> nn.Module:
    """A copy of ``model`` with the encoder's Linears (those of ``groups``, default all four of :data:`GROUPS`)
    replaced by :class:`FakeQuantLinear` ``(act, weight)``."""
    check_choice("act", act, ACT_SCHEMES)
    check_choice("weight", weight, WEIGHT_SCHEMES)
    groups = list(GROUPS) if groups is None else list(groups)
    for g in groups:
        check_choice("groups", g, list(GROUPS))
    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if isinstance(mod, nn.Linear) and group_of(name) in groups:
            m.set_submodule(name, FakeQuantLinear(mod, act, weight))
    return m


@torch.no_grad()
def linear_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Module name -> the input of each encoder Linear on the batch, real tokens only (``[n_tokens, C_in]``)."""
    keep = attention_mask.reshape(-1).bool()
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and group_of(name):
            def hook(_m, args, _out, name=name):
                x = args[0]
                seen[name] = x.reshape(-1, x.shape[-1])[keep].detach().clone()
            hooks.append(mod.register_forward_hook(hook))
    try:
        model(input_ids, attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return seen


def channel_maxima(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per input channel ``max_n |x_nc|`` for each Linear of :func:`linear_inputs`."""
    return {k: v.abs().amax(0) for k, v in inputs.items()}


def outlier_rows(maxima: dict[str, torch.Tensor], factor: float = 6.0) -> list[dict]:
    """One row per Linear: ``max`` (largest channel max), ``median`` (median channel max), ``ratio``,
    ``outliers`` (channels above ``factor`` x median) and ``top`` (the largest channel's index)."""
    rows = []
    for name, mx in maxima.items():
        med = float(mx.median())
        rows.append({"linear": name, "group": group_of(name), "max": float(mx.max()), "median": med,
                     "ratio": float(mx.max()) / med, "outliers": int((mx > factor * med).sum()),
                     "top": int(mx.argmax())})
    return rows


def draw_channel_ranges(fig, maxima: dict[str, torch.Tensor], weights: dict[str, torch.Tensor] | None = None,
                        name: str | None = None) -> dict:
    """Per-channel ``max|x|`` of one Linear's input (bars, channel index on x) and, if ``weights`` is given,
    the per-input-channel ``max|W|`` beneath. Returns what it shows: ``{"linear", "top", "ratio"}``."""
    name = name or next(iter(maxima))
    check_choice("name", name, list(maxima))
    mx = maxima[name]
    ax = fig.add_subplot(2 if weights else 1, 1, 1)
    ax.bar(range(len(mx)), mx.numpy(), width=1.0, color="tab:blue")
    ax.axhline(float(mx.median()), color="k", lw=0.8, ls="--", label="median channel")
    top = int(mx.argmax())
    ax.set_title(f"{name}: input max|x| per channel (top: channel {top})", fontsize=9)
    ax.legend(fontsize=7)
    if weights:
        wmax = weights[name].abs().amax(0)
        ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
        ax2.bar(range(len(wmax)), wmax.numpy(), width=1.0, color="tab:orange")
        ax2.set_title("weight max|W| per input channel", fontsize=9)
        ax2.set_xlabel("input channel")
    return {"linear": name, "top": top, "ratio": float(mx.max() / mx.median())}
