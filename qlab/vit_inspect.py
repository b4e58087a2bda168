"""Looking inside the int8 ViTs of ``notebooks/08-vit-attention-int8.ipynb``: attention maps,
the int8 kernel calls, and the interactive attention figure.

* :func:`capture_attention` -- every block's attention probabilities, from an eager model
  (hooks) or an exported graph (the softmax nodes);
* :func:`check_int8_calls` -- recompute every ``qlab::int8_bmm`` / ``int8_linear`` call with the
  pure-PyTorch reference on the same arguments;
* :func:`spy` -- record the calls of one method (e.g. a ``QFunctional.matmul``);
* :func:`draw_attention`, :class:`AttentionExplorer` -- the notebook's attention figure.
"""

from __future__ import annotations

import contextlib
from typing import Mapping

import torch

from .attention import DequantAttention, FunctionalAttention, Int8Attention
from .vit import Attention

__all__ = ["capture_attention", "check_int8_calls", "spy", "draw_attention", "AttentionExplorer"]


_SOFTMAX = ("aten.softmax.int", "aten._softmax.default")


@torch.no_grad()
def capture_attention(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The attention probabilities of every layer for input ``x``: a list (one per block) of float
    ``[B, heads, tokens, tokens]`` tensors. Eager models: hooks on each attention module's
    ``attn_drop`` (which receives the softmax output; quantized outputs are dequantized). A fused
    ``Int8Attention`` (``softmax="float"``/``"int"``) never writes its probabilities: it runs unfused for the
    capture, and the maps are ``torch.softmax``'s (its own codes are within 1 or 2 codes of 1/255 of them).
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
    owners = [
        m for m in model.modules() if isinstance(m, (Attention, DequantAttention, FunctionalAttention, Int8Attention))
    ]
    fused = [(m, m.fused_attn) for m in owners if isinstance(m, Attention)]
    fused_int8 = [(m, m.softmax) for m in owners if isinstance(m, Int8Attention)]
    hooks = [
        m.attn_drop.register_forward_hook(
            lambda mod, inp, out: seen.append((out.dequantize() if out.is_quantized else out).detach().float())
        )
        for m in owners
    ]
    try:
        for m, _ in fused:
            m.fused_attn = False
        for m, _ in fused_int8:
            m.softmax = "torch"
        model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, f in fused:
            m.fused_attn = f
        for m, f in fused_int8:
            m.softmax = f
    return seen


def check_int8_calls(model, x: torch.Tensor) -> dict:
    """Run ``model(x)`` and recompute every ``qlab::int8_bmm`` / ``int8_linear`` / ``int8_linear_packed`` call with
    ``qlab.kernels.reference`` (and every fused ``qlab::int8_attention`` call with
    ``qlab.kernels.attention_reference``) on the same arguments. Returns the number of calls per op
    (``int8_bmm`` always, the others when they ran) and ``all_equal`` (every output ``torch.equal`` to the
    reference)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from .kernels import attention_reference, reference

    refs = {"int8_bmm": reference.int8_bmm, "int8_linear": reference.int8_linear,
            "int8_linear_packed": reference.int8_linear_packed, "int8_attention": attention_reference.int8_attention}
    stats = {"int8_bmm": 0, "all_equal": True}

    class _Check(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func._schema.name
            if name.startswith("qlab::"):
                op = name.split("::")[1]
                if op in refs:
                    stats[op] = stats.get(op, 0) + 1
                    stats["all_equal"] &= bool(torch.equal(out, refs[op](*args, **(kwargs or {}))))
            return out

    with torch.no_grad(), _Check():
        model(x)
    keys = ("int8_bmm", "int8_attention", "int8_linear", "int8_linear_packed", "all_equal")
    return {k: stats[k] for k in keys if k in stats}


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


def draw_attention(
    fig,
    image: torch.Tensor,
    maps: Mapping[str, list[torch.Tensor]],
    layer: int = 0,
    head: int = 0,
    reference: str = "fp32",
    patch: int = 4,
) -> dict:
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
    cls = {n: maps[n][layer][0, head, 0, -grid * grid :].reshape(grid, grid) for n in names}
    vmax = float(max(c.max() for c in cls.values()))
    mosaic = [["img"] + names, ["bars"] * (len(names) + 1)]
    axes = fig.subplot_mosaic(mosaic, height_ratios=[1.0, 0.8])
    axes["img"].imshow(img.numpy(), cmap="gray_r")
    axes["img"].set_title("input", fontsize=8)
    for n in names:
        ax = axes[n]
        im = ax.imshow(cls[n].numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
        title = n if n == reference else f"{n}\nmax err {errors[n][head]:.3f}"
        ax.set_title(title, fontsize=7)
    cbar = fig.colorbar(im, ax=[axes[n] for n in names], fraction=0.02, pad=0.01)  # one scale for every map
    cbar.set_label("attention weight", fontsize=7)
    cbar.ax.tick_params(labelsize=6)
    for ax in [axes["img"], *(axes[n] for n in names)]:
        ax.set_xticks([])
        ax.set_yticks([])
    others = [n for n in names if n != reference]
    width = 0.8 / max(len(others), 1)
    bars = axes["bars"]
    for i, n in enumerate(others):
        bars.bar([h + i * width for h in range(heads)], errors[n], width=width, label=n)
    bars.set_xticks(
        [h + width * (len(others) - 1) / 2 for h in range(heads)], [f"head {h}" for h in range(heads)], fontsize=7
    )
    bars.set_ylabel(f"max |P - P_{reference}|", fontsize=7)
    bars.set_title(f"block {layer}: attention error per head (chosen head {head})", fontsize=8)
    bars.legend(fontsize=6, ncols=min(len(others), 5), loc="upper left")
    bars.tick_params(labelsize=7)
    worst = max(((n, h) for n in others for h in range(heads)), key=lambda nh: errors[nh[0]][nh[1]], default=None)
    return {
        "vmax": vmax,
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
            x = self.images[image : image + 1]
            self._cache[image] = {n: capture_attention(m, x) for n, m in self.models.items()}
        return self._cache[image]

    def draw(self, fig, image: int = 0, layer: int = 0, head: int = 0) -> dict:
        return draw_attention(fig, self.images[image], self.maps(image), layer, head, self.reference)
