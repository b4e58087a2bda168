"""SmoothQuant (Xiao et al., 2023) for a post-LayerNorm BERT encoder. Taught in
``notebooks/10-real-transformer-int8.ipynb`` (section 5).

A Linear's input ``X`` has a few outlier *channels* (hidden channel 99 of all-MiniLM-L6-v2 reaches 30 where
a typical channel stays near 1.5), so one per-tensor activation scale wastes most codes on them. Weights are
tame per input channel. SmoothQuant moves the difficulty across, channel by channel::

    s_j = max|X_j|^α / max|W_j|^(1-α)                                     (1)  per input channel j, α in [0, 1]
    X Wᵀ = (X diag(s)⁻¹) (W diag(s))ᵀ                                      (2)  exact in real arithmetic
    LN(x) / s = (γ / s) ⊙ x̂ + β / s                                        (3)  1/s folded into the LayerNorm
    LN₂(d + r)  with  r = LN(x) = (LN(x) / s) ⊙ s                          (4)  the residual branch rescaled

``max|X_j|`` comes from calibration batches, ``max|W_j|`` from the weights of every Linear fed by ``X``
(q, k and v share one ``s``). (3) needs ``X`` to come out of a LayerNorm -- in BERT the input of q/k/v
(``embeddings.LayerNorm`` or the previous layer's ``output.LayerNorm``) and of the FFN up-projection
(``attention.output.LayerNorm``). BERT is *post*-LN: that LayerNorm output is also the residual input of
the next LayerNorm, so (4) multiplies it back by ``s`` there (:class:`ScaledResidual`, one elementwise
multiply). The FFN down-projection's input comes out of GELU, which nothing can absorb ``1/s`` into:
``ffn_down=True`` inserts an explicit per-channel multiply (:class:`ChannelScale`) before it instead.

The smoothed float model equals the original up to float rounding (``tests/test_smoothquant.py``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._checks import check_bool, check_number, check_tensor

__all__ = ["smoothing_factors", "activation_maxima", "smooth", "ScaledResidual", "ChannelScale", "smooth_points"]


def smoothing_factors(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Equation (1): ``s = act_max**alpha / weight_max**(1 - alpha)`` per channel (float32 ``[C]``).

    Both maxima must be 1-D of the same length, finite and positive (a channel that is zero everywhere
    has no scale to migrate: clamp it first); ``ValueError`` names the offending argument otherwise."""
    alpha = check_number("alpha", alpha, 0.0, 1.0)
    for name, t in (("act_max", act_max), ("weight_max", weight_max)):
        check_tensor(name, t)
        if not t.is_floating_point() or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D floating-point tensor, got {t.dtype} of shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
            raise ValueError(f"{name} must be finite and positive in every channel (got min {float(t.min()):g})")
    if act_max.shape != weight_max.shape:
        raise ValueError(f"act_max and weight_max must have the same length, got {act_max.numel()} and "
                         f"{weight_max.numel()}")
    s = act_max.double() ** alpha / weight_max.double() ** (1.0 - alpha)
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError("the smoothing factors are not all finite and positive: the maxima span too wide a range")
    return s.float()


class ScaledResidual(nn.Module):
    """transformers' ``BertSelfOutput`` / ``BertOutput`` with equation (4): ``LN(dropout(dense(h)) + r * s)``."""

    def __init__(self, block: nn.Module, s: torch.Tensor):
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = block.dense, block.dropout, block.LayerNorm
        self.register_buffer("res_scale", s.clone())

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor * self.res_scale)


class ChannelScale(nn.Module):
    """``x * inv_s`` per channel, then the Linear with ``W diag(s)``: equation (2) made explicit."""

    def __init__(self, linear: nn.Linear, s: torch.Tensor):
        super().__init__()
        self.register_buffer("inv_s", (1.0 / s).float())
        self.linear = linear
        with torch.no_grad():
            linear.weight.mul_(s)

    def forward(self, x):
        return self.linear(x * self.inv_s)


def _bert(model, smoothed_ok: bool = False) -> nn.Module:
    """The ``BertModel`` inside a :class:`qlab.transformer.Embedder` (or a BertModel), or ``TypeError``;
    one already smoothed only if ``smoothed_ok``."""
    bert = getattr(model, "bert", model)
    ok = hasattr(bert, "embeddings") and hasattr(bert, "encoder") and hasattr(bert.embeddings, "LayerNorm")
    if ok:
        for layer in getattr(bert.encoder, "layer", []):
            a = layer.attention
            ok &= all(isinstance(getattr(a.self, n, None), nn.Linear) for n in ("query", "key", "value"))
            ok &= isinstance(getattr(layer.intermediate, "dense", None), nn.Linear)
            ok &= all(isinstance(getattr(b, "LayerNorm", None), nn.LayerNorm) for b in (a.output, layer.output))
            if not smoothed_ok:
                ok &= type(a.output).__name__ == "BertSelfOutput" and type(layer.output).__name__ == "BertOutput"
    if not ok:
        raise TypeError(f"model must be a qlab.transformer.Embedder around a transformers BertModel (post-LN "
                        f"BERT layers, not already smoothed), got {type(model).__name__}")
    return bert


def smooth_points(model) -> dict[str, tuple[str, list[str]]]:
    """Where (3) applies: activation name -> (the LayerNorm producing it, the Linears it feeds)."""
    bert = _bert(model, smoothed_ok=True)
    points = {}
    prev = "embeddings.LayerNorm"
    for i, _ in enumerate(bert.encoder.layer):
        p = f"encoder.layer.{i}"
        points[f"{p}.qkv_in"] = (prev, [f"{p}.attention.self.{n}" for n in ("query", "key", "value")])
        points[f"{p}.ffn_up_in"] = (f"{p}.attention.output.LayerNorm", [f"{p}.intermediate.dense"])
        prev = f"{p}.output.LayerNorm"
    return points


@torch.no_grad()
def activation_maxima(model, calibration: list[dict]) -> dict[str, torch.Tensor]:
    """Per-channel ``max|x|`` over the calibration batches (all tokens, as a static observer sees them) of the
    input of every Linear in the encoder: module name -> ``[C_in]``."""
    bert = _bert(model, smoothed_ok=True)
    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise TypeError("calibration must be a non-empty list of tokenized batches (qlab.transformer.tokenize)")
    maxima: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in bert.named_modules():
        if isinstance(mod, nn.Linear) and name.startswith("encoder."):
            def hook(_m, args, name=name):
                m = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
                maxima[name] = m if name not in maxima else torch.maximum(maxima[name], m)
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        for b in calibration:
            bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    return maxima


def _col_max(linears: list[nn.Linear]) -> torch.Tensor:
    return torch.cat([lin.weight.detach() for lin in linears]).abs().amax(0)


@torch.no_grad()
def smooth(model, act_max: dict[str, torch.Tensor], alpha: float = 0.5, ffn_down: bool = False, eps: float = 1e-5):
    """A smoothed copy of ``model`` (a :class:`qlab.transformer.Embedder`): equations (1)-(4) at every point
    of :func:`smooth_points`; with ``ffn_down`` also an explicit :class:`ChannelScale` before each FFN
    down-projection. ``act_max`` from :func:`activation_maxima`; maxima below ``eps`` are raised to it.
    ``model`` is never changed; ``TypeError`` for a model that is not a post-LN BERT Embedder."""
    alpha = check_number("alpha", alpha, 0.0, 1.0)
    check_bool("ffn_down", ffn_down)
    check_number("eps", eps, 0.0, lo_open=True)
    _bert(model)
    if not isinstance(act_max, dict):
        raise TypeError(f"act_max must be the dict activation_maxima returns, got {type(act_max).__name__}")
    m = copy.deepcopy(model)
    bert = _bert(m, smoothed_ok=True)
    residual_of = {}  # LayerNorm name -> the block whose residual input it is
    for i, layer in enumerate(bert.encoder.layer):
        prev = "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm"
        residual_of[prev] = (layer.attention, "output")
        residual_of[f"encoder.layer.{i}.attention.output.LayerNorm"] = (layer, "output")
    for _, (ln_name, lin_names) in smooth_points(m).items():
        if lin_names[0] not in act_max:
            raise ValueError(f"act_max has no entry for {lin_names[0]!r}: compute it with activation_maxima(model, ..)")
        linears = [bert.get_submodule(n) for n in lin_names]
        s = smoothing_factors(act_max[lin_names[0]].clamp(min=eps), _col_max(linears).clamp(min=eps), alpha)
        ln = bert.get_submodule(ln_name)
        ln.weight.div_(s)                                   # (3)
        ln.bias.div_(s)
        for lin in linears:                                 # (2)
            lin.weight.mul_(s)
        owner, attr = residual_of[ln_name]                  # (4)
        setattr(owner, attr, ScaledResidual(getattr(owner, attr), s))
    if ffn_down:
        for i, layer in enumerate(bert.encoder.layer):
            name = f"encoder.layer.{i}.output.dense"
            if name not in act_max:
                raise ValueError(f"act_max has no entry for {name!r}")
            lin = layer.output.dense
            s = smoothing_factors(act_max[name].clamp(min=eps), _col_max([lin]).clamp(min=eps), alpha)
            layer.output.dense = ChannelScale(lin, s)
    return m
