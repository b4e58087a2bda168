"""A small timm ViT for the digits, four ways to run its attention in int8, and how to compare them.
Taught in ``notebooks/08-vit-attention-int8.ipynb``.

The model is timm's own ``VisionTransformer`` (:data:`DIGITS_VIT`: 32x32 grey
digits upsampled from ``qlab.data``, 4x4 patches -> 64 patch tokens + a class
token, 4 blocks of 4 heads of dimension 16), trained by ``scripts/train_vit.py``
and loaded by ``qlab.checkpoints.load("digits_vit")``. Its attention is exactly the ``timm.layers.Attention``
of the user report (with ``fused_attn`` off, so that the two matmuls are explicit).

Four fixes, each returning a model that takes the same float input:

1. :func:`eager_quantize_vit` ``(attention="dequant")`` -- eager ``torch.ao.quantization``;
   the linears are quantized, the attention core runs in float32 between a
   dequantize and a quantize (:class:`qlab.attention.DequantAttention`).
2. :func:`eager_quantize_vit` ``(attention="functional")`` -- eager mode with
   ``FloatFunctional.mul_scalar``/``.matmul`` (:class:`qlab.attention.FunctionalAttention`).
3. :func:`pt2e_quantize` -- PT2E via torchao's ``X86InductorQuantizer`` with the
   matmul opt-in: the graph holds ``dequantize -> matmul -> quantize``;
   ``torch.compile`` (Inductor, ``freezing=True``) lowers it.
4. :func:`qlab.pt2e_lowering.lower_to_qlab` on fix 3's graph, or :func:`quantize_vit`
   in eager mode: both matmuls and all linears on ``qlab.kernels`` (int8).

Every linear of the blocks and the head is int8 in every fix; the patch embedding
(a convolution) stays float32 throughout. :func:`compare` measures a fix against
fp32: top-1 accuracy, agreement of predictions, max abs error and cosine similarity
of the logits.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from ._checks import check_choice
from .attention import (
    PROB_SCALES,
    SOFTMAXES,
    Attention,
    DequantAttention,
    FunctionalAttention,
    Int8Attention,
    Int8Linear,
    ObservedAttention,
    ObservedLinear,
)
from .int8_block import Int8Block, supported_block
from .int8_mlp import Int8Mlp, ObservedMlp, supported_mlp

__all__ = [
    "DIGITS_VIT",
    "build",
    "set_fused_attn",
    "predict",
    "compare",
    "attention_module_names",
    "quantize_vit",
    "eager_quantize_vit",
    "pt2e_quantize",
]

#: timm ``VisionTransformer`` arguments of the digits ViT (scripts/train_vit.py trains it).
DIGITS_VIT = {
    "img_size": 32,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "qkv_bias": True,
}


def timm_version() -> str:
    import timm

    return timm.__version__


def build(**kwargs) -> nn.Module:
    """A timm ``VisionTransformer(**kwargs)`` with random weights."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**kwargs)


def set_fused_attn(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch timm's ``F.scaled_dot_product_attention`` path on or off in every ``Attention`` (in place).
    Off, the forward computes ``q @ k.T``, softmax and ``@ v`` explicitly: what quantization sees."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = bool(enabled)
    return model


# ----------------------------------------------------------------------------------------------
# Measuring a fix


@torch.no_grad()
def predict(model, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` for the images ``x``, in batches (eval mode for modules)."""
    if isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model.eval()
    return torch.cat([model(xb) for xb in torch.split(x, batch_size)])


def compare(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """How far ``logits`` are from the fp32 ``ref_logits``: ``accuracy`` (top-1, if ``labels``),
    ``agreement`` (same top-1 as fp32), ``max_abs_error`` and ``cosine`` (mean per-image cosine
    similarity of the logit vectors). The two float measures are rounded to 4 significant digits:
    their last bits depend on the CPU's float kernels, and a notebook prints them."""
    if logits.shape != ref_logits.shape:
        raise ValueError(
            f"logits must have the shape of ref_logits {tuple(ref_logits.shape)}, got {tuple(logits.shape)}"
        )
    pred = logits.argmax(1)
    out = {}
    if labels is not None:
        out["accuracy"] = float((pred == labels).float().mean())
    out["agreement"] = float((pred == ref_logits.argmax(1)).float().mean())
    out["max_abs_error"] = float(f"{float((logits - ref_logits).abs().max()):.4g}")
    out["cosine"] = float(f"{float(torch.nn.functional.cosine_similarity(logits, ref_logits, dim=1).mean()):.4g}")
    return out


# ----------------------------------------------------------------------------------------------
# Finding what to convert


def _unsupported_reason(module: nn.Module) -> str | None:
    cls = type(module)
    if isinstance(module, Attention):
        if cls is not Attention:
            return f"a subclass of timm.layers.Attention ({cls.__module__}.{cls.__qualname__}) may change its forward"
        if getattr(module, "gate", None) is not None:
            return "gated attention (timm Attention with gated=True)"
        return None
    if isinstance(module, nn.MultiheadAttention) or "attention" in cls.__name__.lower():
        return f"{cls.__module__}.{cls.__qualname__}"
    return None


def attention_module_names(model: nn.Module) -> list[str]:
    """Names of the ``timm.layers.Attention`` modules; ``TypeError`` naming any other attention-like module."""
    names = []
    for name, m in model.named_modules():
        if any(name.startswith(n + ".") for n in names):
            continue
        reason = _unsupported_reason(m)
        if reason is not None:
            raise TypeError(
                f"model.{name} cannot be converted: {reason}. qlab.vit converts timm.layers.Attention "
                "(any depth, heads, qkv_bias, qk_norm, scale_norm; not gated) and nn.Linear"
            )
        if isinstance(m, Attention):
            names.append(name)
    if not names:
        raise TypeError(f"model must contain timm.layers.Attention modules, found none in {type(model).__name__}")
    return names


def _linear_names(model: nn.Module, inside: list[str]) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(n.startswith(a + ".") for a in inside)
    ]


def _check_batches(calibration_batches) -> list[torch.Tensor]:
    batches = list(calibration_batches)
    if not batches or not all(isinstance(b, torch.Tensor) for b in batches):
        raise TypeError("calibration_batches must be a non-empty iterable of input tensors")
    return batches


# ----------------------------------------------------------------------------------------------
# Fix 4 (eager): qlab's int8 kernels


@torch.no_grad()
def quantize_vit(model: nn.Module, calibration_batches: Iterable[torch.Tensor], requant: str = "float",
                 softmax: str = "float", gelu: str = "table", prob_scale: str = "calibrated",
                 fuse_residual: bool = True) -> nn.Module:
    """A copy of ``model`` with every timm ``Attention`` replaced by :class:`~qlab.attention.Int8Attention`,
    every timm ``Mlp`` by :class:`~qlab.int8_mlp.Int8Mlp` and every other ``nn.Linear`` by
    :class:`~qlab.attention.Int8Linear` (qlab.kernels, int8; every weight packed once, here).

    Calibration: the float model runs ``calibration_batches`` while observers record the
    min/max of each quantized activation. ``requant``: ``"float"`` (PyTorch's rounding) or
    ``"fixed"`` (integer-only). ``softmax``: ``"float"`` (default) or ``"int"`` runs each attention's q·kᵀ,
    softmax and P·v as one fused ``int8_attention`` call (notebook 12); ``"torch"`` as two ``int8_bmm`` calls around
    ``torch.softmax`` (notebook 08's fix 4 as first built). Raises ``TypeError`` naming any attention module it
    cannot convert. ``gelu``: ``"table"`` (default) runs each ``Mlp``'s GELU as a 256-entry table in fc1's
    epilogue, between two uint8 activations (notebook 12, equation (3)); ``"float"`` hands fc1's float32 output to
    ``nn.GELU`` and quantizes again for fc2 (notebook 08's build). ``prob_scale``: ``"calibrated"`` (default)
    quantizes each attention's probabilities with the largest one seen while calibrating over 255 (at most 1/255),
    ``"fixed"`` with 1/255 (see :data:`~qlab.attention.PROB_SCALES`). ``fuse_residual``: every timm ``Block``
    without LayerScale or drop path becomes an :class:`~qlab.int8_block.Int8Block`, its two skip connections added
    in the epilogues of ``attn.proj`` and ``mlp.fc2`` (the same bits; ``False`` keeps timm's separate adds).
    """
    if not isinstance(fuse_residual, bool):
        raise TypeError(f"fuse_residual must be a bool, got {type(fuse_residual).__name__}")
    check_choice("requant", requant, ["float", "fixed"])
    check_choice("softmax", softmax, SOFTMAXES)
    check_choice("gelu", gelu, ["table", "float"])
    check_choice("prob_scale", prob_scale, PROB_SCALES)
    batches = _check_batches(calibration_batches)
    m = copy.deepcopy(model).eval()
    attn_names = attention_module_names(m)
    mlp_names = [n for n, mod in m.named_modules() if supported_mlp(mod)] if gelu == "table" else []
    lin_names = _linear_names(m, attn_names + mlp_names)
    for n in attn_names:
        m.set_submodule(n, ObservedAttention(m.get_submodule(n)))
    for n in mlp_names:
        m.set_submodule(n, ObservedMlp(m.get_submodule(n)))
    for n in lin_names:
        m.set_submodule(n, ObservedLinear(m.get_submodule(n)))
    for xb in batches:
        m(xb)
    for n in attn_names:
        m.set_submodule(n, Int8Attention.from_observed(m.get_submodule(n), requant, softmax, prob_scale))
    for n in mlp_names:
        m.set_submodule(n, Int8Mlp.from_observed(m.get_submodule(n), requant))
    for n in lin_names:
        m.set_submodule(n, Int8Linear.from_observed(m.get_submodule(n), requant))
    if fuse_residual:
        for n in [n for n, mod in m.named_modules() if supported_block(mod)]:
            m.set_submodule(n, Int8Block(m.get_submodule(n)))
    return m


# ----------------------------------------------------------------------------------------------
# Fixes 1 and 2: eager torch.ao.quantization


@torch.no_grad()
def eager_quantize_vit(
    model: nn.Module, calibration_batches: Iterable[torch.Tensor], attention: str = "dequant", qconfig=None
) -> nn.Module:
    """Eager-mode ``torch.ao.quantization`` of a timm ViT (a copy).

    ``attention="dequant"`` (fix 1): :class:`~qlab.attention.DequantAttention`, the matmuls in
    float32; ``"functional"`` (fix 2): :class:`~qlab.attention.FunctionalAttention`, the matmuls
    as ``quantized::matmul``. Every other ``nn.Linear`` is wrapped in a ``QuantWrapper``.
    ``qconfig``: default ``get_default_qconfig("x86")``, as in the user report.
    """
    import torch.ao.quantization as tq
    from torch.ao.nn.quantized import Softmax as QSoftmax

    check_choice("attention", attention, ["dequant", "functional"])
    batches = _check_batches(calibration_batches)
    m = copy.deepcopy(model).eval()
    attn_names = attention_module_names(m)
    lin_names = _linear_names(m, attn_names)
    cls = DequantAttention if attention == "dequant" else FunctionalAttention
    qconfig = qconfig or tq.get_default_qconfig("x86")
    for n in attn_names:
        m.set_submodule(n, cls(m.get_submodule(n)))
    for n in lin_names:
        m.set_submodule(n, tq.QuantWrapper(m.get_submodule(n)))
    for n in attn_names + lin_names:
        m.get_submodule(n).qconfig = qconfig
    allow = tq.get_default_qconfig_propagation_list() | {nn.Softmax}
    tq.prepare(m, inplace=True, allow_list=allow)
    for xb in batches:
        m(xb)
    mapping = {**tq.get_default_static_quant_module_mappings(), nn.Softmax: QSoftmax}
    return tq.convert(m, mapping=mapping, inplace=True)


# ----------------------------------------------------------------------------------------------
# Fix 3: PT2E with torchao's X86InductorQuantizer


@torch.no_grad()
def pt2e_quantize(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    matmul: bool = True,
    skip: tuple[str, ...] = ("patch_embed",),
) -> torch.fx.GraphModule:
    """PT2E with ``X86InductorQuantizer`` (default recipe; ``matmul=True`` adds
    ``set_function_type_qconfig(torch.matmul, ...)``; modules named in ``skip`` stay float) through
    :func:`qlab.pt2e.pt2e_int8` (export with a dynamic batch, prepare, calibrate, convert). Returns the
    converted ``GraphModule``: ``quantize_per_tensor``/``dequantize_*`` nodes around float ops."""
    from .pt2e import pt2e_int8, x86_quantizer

    batches = _check_batches(calibration_batches)
    m = set_fused_attn(copy.deepcopy(model).eval(), False)
    attention_module_names(m)
    quantizer = x86_quantizer()
    if matmul:
        quantizer.set_function_type_qconfig(torch.matmul, quantizer.global_config)
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    return pt2e_int8(m, batches, quantizer)
