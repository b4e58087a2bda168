"""A small timm ViT for the digits, four ways to run its attention in int8, and how to compare them.
Taught in ``notebooks/08-vit-attention-int8.ipynb``.

The model is timm's own ``VisionTransformer`` (:data:`DIGITS_VIT`: 32x32 grey
digits upsampled from ``qlab.data``, 4x4 patches -> 64 patch tokens + a class
token, 4 blocks of 4 heads of dimension 16), trained by ``scripts/train_vit.py``
and loaded by :func:`load_pretrained`, which checks the file's SHA-256 against
``data/vit_models.json``. Its attention is exactly the ``timm.layers.Attention``
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

import contextlib
import copy
import hashlib
import json
import pathlib
import statistics
import time
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ._checks import check_choice
from .attention import (
    Attention,
    DequantAttention,
    FunctionalAttention,
    ObservedAttention,
    ObservedLinear,
    QuantizedAttention,
    QuantizedLinear,
)

__all__ = [
    "DATA_DIR",
    "REGISTRY",
    "DIGITS_VIT",
    "build",
    "set_fused_attn",
    "available",
    "model_info",
    "load_pretrained",
    "predict",
    "compare",
    "attention_module_names",
    "quantize_vit",
    "eager_quantize_vit",
    "pt2e_quantize",
    "capture_attention",
    "check_int8_calls",
    "spy",
    "time_interleaved",
    "draw_attention",
    "AttentionExplorer",
]

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data"
REGISTRY = "vit_models.json"

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
# The trained checkpoint


def _registry(data_dir=None) -> dict:
    path = pathlib.Path(data_dir or DATA_DIR) / REGISTRY
    if not path.exists():
        raise FileNotFoundError(f"{REGISTRY} not found in the data directory; run scripts/train_vit.py")
    return json.loads(path.read_text())


def available(data_dir=None) -> list[str]:
    """Names of the checkpoints listed in ``data/vit_models.json``."""
    return sorted(_registry(data_dir))


def model_info(name: str = "digits_vit", data_dir=None) -> dict:
    """The ``data/vit_models.json`` entry of ``name``: file, SHA-256, timm arguments, input size,
    test accuracy recorded after training, recipe, versions."""
    reg = _registry(data_dir)
    if name not in reg:
        raise ValueError(f"name must be one of {sorted(reg)}, got {name!r}")
    return dict(reg[name])


def load_pretrained(name: str = "digits_vit", data_dir=None) -> nn.Module:
    """The trained ViT ``name`` in eval mode with ``fused_attn`` off, after checking the file's SHA-256."""
    info = model_info(name, data_dir)
    path = pathlib.Path(data_dir or DATA_DIR) / info["file"]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {info['file']} is missing from the data directory")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != info["sha256"]:
        raise ValueError(f"{info['file']} has SHA-256 {digest[:12]}..., {REGISTRY} records {info['sha256'][:12]}...")
    model = build(**info["kwargs"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return set_fused_attn(model.eval(), False)


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
        raise ValueError(f"logits must have the shape of ref_logits {tuple(ref_logits.shape)}, got {tuple(logits.shape)}")
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
        n for n, m in model.named_modules()
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
def quantize_vit(model: nn.Module, calibration_batches: Iterable[torch.Tensor], requant: str = "float") -> nn.Module:
    """A copy of ``model`` with every timm ``Attention`` replaced by :class:`~qlab.attention.QuantizedAttention`
    and every other ``nn.Linear`` by :class:`~qlab.attention.QuantizedLinear` (qlab.kernels, int8).

    Calibration: the float model runs ``calibration_batches`` while observers record the
    min/max of each quantized activation. ``requant``: ``"float"`` (PyTorch's rounding) or
    ``"fixed"`` (integer-only). Raises ``TypeError`` naming any attention module it cannot convert.
    """
    check_choice("requant", requant, ["float", "fixed"])
    batches = _check_batches(calibration_batches)
    m = copy.deepcopy(model).eval()
    attn_names = attention_module_names(m)
    lin_names = _linear_names(m, attn_names)
    for n in attn_names:
        m.set_submodule(n, ObservedAttention(m.get_submodule(n)))
    for n in lin_names:
        m.set_submodule(n, ObservedLinear(m.get_submodule(n)))
    for xb in batches:
        m(xb)
    for n in attn_names:
        m.set_submodule(n, QuantizedAttention.from_observed(m.get_submodule(n), requant))
    for n in lin_names:
        m.set_submodule(n, QuantizedLinear.from_observed(m.get_submodule(n), requant))
    return m


# ----------------------------------------------------------------------------------------------
# Fixes 1 and 2: eager torch.ao.quantization


@torch.no_grad()
def eager_quantize_vit(model: nn.Module, calibration_batches: Iterable[torch.Tensor], attention: str = "dequant",
                       qconfig=None) -> nn.Module:
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
def pt2e_quantize(model: nn.Module, calibration_batches: Iterable[torch.Tensor], matmul: bool = True,
                  skip: tuple[str, ...] = ("patch_embed",), dynamic_batch: bool = True):
    """PT2E: ``torch.export``, ``prepare_pt2e`` with ``X86InductorQuantizer`` (default recipe;
    ``matmul=True`` adds ``set_function_type_qconfig(torch.matmul, ...)``; modules named in
    ``skip`` stay float), calibration, ``convert_pt2e``. Returns the converted ``GraphModule``:
    ``quantize_per_tensor``/``dequantize_*`` nodes around float ops. ``dynamic_batch``: any
    batch size (exported with a batch of 2), else the shape of the first calibration batch."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    batches = _check_batches(calibration_batches)
    m = set_fused_attn(copy.deepcopy(model).eval(), False)
    attention_module_names(m)
    if dynamic_batch:
        example = batches[0][:1].expand(2, *batches[0].shape[1:]).contiguous()  # batch 1 would specialize
        dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
        gm = torch.export.export(m, (example,), dynamic_shapes=dynamic).module()
    else:
        gm = torch.export.export(m, (batches[0],)).module()
    cfg = xiq.get_default_x86_inductor_quantization_config()
    quantizer = xiq.X86InductorQuantizer().set_global(cfg)
    if matmul:
        quantizer.set_function_type_qconfig(torch.matmul, cfg)
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(gm, quantizer)
    for xb in batches:
        prepared(xb)
    return convert_pt2e(prepared)


# ----------------------------------------------------------------------------------------------
# Looking inside: attention maps and the int8 calls


_SOFTMAX = ("aten.softmax.int", "aten._softmax.default")


@torch.no_grad()
def capture_attention(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The attention probabilities of every layer for input ``x``: a list (one per block) of float
    ``[B, heads, tokens, tokens]`` tensors. Eager models: hooks on each attention module's
    ``attn_drop`` (which receives the softmax output; quantized outputs are dequantized).
    ``GraphModule`` s: the outputs of the softmax nodes, in graph order."""
    if isinstance(model, torch.fx.GraphModule):
        seen: list[torch.Tensor] = []

        class _Grab(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if n.op == "call_function" and str(n.target) in _SOFTMAX:
                    seen.append(out.detach().float())
                return out

        _Grab(model).run(x)
        return seen
    seen = []
    owners = [m for m in model.modules() if isinstance(m, (Attention, DequantAttention, FunctionalAttention,
                                                           QuantizedAttention))]
    fused = [(m, m.fused_attn) for m in owners if isinstance(m, Attention)]
    hooks = [m.attn_drop.register_forward_hook(
        lambda mod, inp, out: seen.append((out.dequantize() if out.is_quantized else out).detach().float()))
        for m in owners]
    try:
        for m, _ in fused:
            m.fused_attn = False
        model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, f in fused:
            m.fused_attn = f
    return seen


def check_int8_calls(model, x: torch.Tensor) -> dict:
    """Run ``model(x)`` and recompute every ``qlab::int8_bmm`` / ``qlab::int8_linear`` call with
    ``qlab.kernels.reference`` on the same arguments. Returns the number of calls per op and
    ``all_equal`` (every output ``torch.equal`` to the reference)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from .kernels import reference

    refs = {"int8_bmm": reference.int8_bmm, "int8_linear": reference.int8_linear}
    stats = {"int8_bmm": 0, "int8_linear": 0, "all_equal": True}

    class _Check(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func._schema.name
            if name.startswith("qlab::"):
                op = name.split("::")[1]
                if op in refs:
                    stats[op] += 1
                    stats["all_equal"] &= bool(torch.equal(out, refs[op](*args, **(kwargs or {}))))
            return out

    with torch.no_grad(), _Check():
        model(x)
    return stats


@contextlib.contextmanager
def spy(obj, method: str):
    """Record every call of ``obj.method`` inside the ``with`` block as ``(args, result)``::

        with spy(model.blocks[0].attn.qk, "matmul") as calls:
            model(x)
        (a, b), out = calls[0]
    """
    original = getattr(obj, method)
    if not callable(original):
        raise TypeError(f"method must name a callable attribute of {type(obj).__name__}, got {method!r}")
    calls: list[tuple[tuple, object]] = []
    had_own = method in vars(obj)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, out))
        return out

    setattr(obj, method, wrapper)
    try:
        yield calls
    finally:
        if had_own:
            setattr(obj, method, original)
        else:
            delattr(obj, method)


@torch.inference_mode()
def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 10, warmup: int = 1,
                     baseline: str | None = None) -> dict[str, dict]:
    """Time each function ``repeats`` times, in turn (one call of each per round, so a slow spell of a
    shared machine hits all of them). Returns ``{name: {"median_ms", "ratio"}}`` where ``ratio`` is the
    median over rounds of ``t / t_baseline`` (``baseline``: the first name unless given)."""
    if not fns:
        raise ValueError("fns must be a non-empty dict of name -> callable")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    baseline = next(iter(fns)) if baseline is None else baseline
    check_choice("baseline", baseline, list(fns))
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[n].append(time.perf_counter() - t0)
    return {
        n: {"median_ms": 1e3 * statistics.median(t),
            "ratio": statistics.median(a / b for a, b in zip(t, times[baseline]))}
        for n, t in times.items()
    }


def draw_attention(fig, image: torch.Tensor, maps: Mapping[str, list[torch.Tensor]], layer: int = 0, head: int = 0,
                   reference: str = "fp32", patch: int = 4) -> dict:
    """Class-token attention of one ``layer`` and ``head`` for every model in ``maps`` (name ->
    :func:`capture_attention` result for one image), drawn over the patch grid, and the error of
    each head against ``reference`` (max |P - P_ref| over the whole token x token matrix).

    Returns ``{"head_error": {name: [per head]}, "cls_attention": {name: [patch weights]},
    "worst": (name, head)}``: what the figure shows."""
    if reference not in maps:
        raise ValueError(f"reference must be one of {list(maps)}, got {reference!r}")
    ref = maps[reference]
    layers, heads = len(ref), ref[0].shape[1]
    if not (isinstance(layer, int) and 0 <= layer < layers):
        raise ValueError(f"layer must be an int in [0, {layers - 1}], got {layer!r}")
    if not (isinstance(head, int) and 0 <= head < heads):
        raise ValueError(f"head must be an int in [0, {heads - 1}], got {head!r}")
    img = image.squeeze().float()
    grid = img.shape[-1] // patch
    names = list(maps)
    errors = {n: [float((maps[n][layer][0, h] - ref[layer][0, h]).abs().max()) for h in range(heads)] for n in names}
    cls = {n: maps[n][layer][0, head, 0, -grid * grid:].reshape(grid, grid) for n in names}
    vmax = float(max(c.max() for c in cls.values()))
    mosaic = [["img"] + names, ["bars"] * (len(names) + 1)]
    axes = fig.subplot_mosaic(mosaic, height_ratios=[1.0, 0.8])
    axes["img"].imshow(img.numpy(), cmap="gray_r")
    axes["img"].set_title("input", fontsize=8)
    for n in names:
        ax = axes[n]
        ax.imshow(cls[n].numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
        title = n if n == reference else f"{n}\nmax err {errors[n][head]:.3f}"
        ax.set_title(title, fontsize=7)
    for ax in [axes["img"], *(axes[n] for n in names)]:
        ax.set_xticks([])
        ax.set_yticks([])
    others = [n for n in names if n != reference]
    width = 0.8 / max(len(others), 1)
    bars = axes["bars"]
    for i, n in enumerate(others):
        bars.bar([h + i * width for h in range(heads)], errors[n], width=width, label=n)
    bars.set_xticks([h + width * (len(others) - 1) / 2 for h in range(heads)], [f"head {h}" for h in range(heads)],
                    fontsize=7)
    bars.set_ylabel(f"max |P - P_{reference}|", fontsize=7)
    bars.set_title(f"block {layer}: attention error per head (chosen head {head})", fontsize=8)
    bars.legend(fontsize=6, ncols=min(len(others), 5), loc="upper left")
    bars.tick_params(labelsize=7)
    worst = max(((n, h) for n in others for h in range(heads)), key=lambda nh: errors[nh[0]][nh[1]], default=None)
    return {
        "head_error": errors,
        "cls_attention": {n: [round(float(v), 6) for v in c.flatten()] for n, c in cls.items()},
        "worst": worst,
    }


class AttentionExplorer:
    """The draw function behind notebook 08's attention widget: ``draw(fig, image, layer, head)``
    over a dict of models, computing (and caching) each image's attention maps on first use."""

    def __init__(self, models: Mapping[str, object], images: torch.Tensor, reference: str = "fp32"):
        if reference not in models:
            raise ValueError(f"reference must be one of {list(models)}, got {reference!r}")
        self.models = dict(models)
        self.images = images
        self.reference = reference
        self._cache: dict[int, dict[str, list[torch.Tensor]]] = {}

    def maps(self, image: int) -> dict[str, list[torch.Tensor]]:
        if not (isinstance(image, int) and 0 <= image < len(self.images)):
            raise ValueError(f"image must be an int in [0, {len(self.images) - 1}], got {image!r}")
        if image not in self._cache:
            x = self.images[image: image + 1]
            self._cache[image] = {n: capture_attention(m, x) for n, m in self.models.items()}
        return self._cache[image]

    def draw(self, fig, image: int = 0, layer: int = 0, head: int = 0) -> dict:
        return draw_attention(fig, self.images[image], self.maps(image), layer, head, self.reference)
