"""BERT self-attention with padding masks, in float and in int8 on qlab's kernels. Taught in
``notebooks/10-real-transformer-int8.ipynb`` (section 6); the ViT version without masks is notebook 08's
:mod:`qlab.attention`, whose :class:`~qlab.attention.Int8Linear` and observers this module reuses.

**The mask convention** (this module owns it). A batch of sentences is padded to the longest; the tokenizer's
``attention_mask`` ``m`` is ``[B, T]`` with 1 for a token and 0 for padding. Attention must give padded *keys*
zero weight, so the mask becomes an additive bias on the logits, broadcast over heads and queries::

    bias[b, 0, 0, j] = 0 if m[b, j] = 1 else  M,      M = torch.finfo(float32).min       (1)
    P = softmax(c · q kᵀ + bias),   c = head_dim^(-1/2)                                 (2)
    ctx = P v                                                                            (3)

``M`` (not ``-inf``) as transformers uses: ``exp(M - max)`` underflows to exactly 0, and a row whose keys are
all padding (impossible with BERT's [CLS]) would still give a finite uniform row instead of NaN. Padded
*queries* are computed and ignored (mean pooling drops them). transformers hands the attention module the
mask already expanded to ``[B, 1, T, T]`` -- boolean (``True``: attend) for SDPA, additive for eager --
or ``None`` when nothing is padded; :func:`additive_mask` turns any of these into (1).

:func:`reference_attention` is (1)-(3) in plain float32 PyTorch, op for op transformers' eager attention.
:class:`Int8BertSelfAttention` lowers it onto ``torch.ops.qlab``::

    q = int8_linear(xq, c·W_q, c·b_q) -> uint8;  k, v = int8_linear(...) -> int8    (c folded into W_q)
    logits = int8_bmm(q, k, transpose_b=True) -> float32 + bias                     (1), (2)
    P = softmax(logits) -> uint8 codes, scale 1/255
    ctx = int8_bmm(P, v) -> float32                                                   (3)

Sequence lengths vary from batch to batch: nothing is compiled or specialised to a shape.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._checks import check_choice, check_tensor
from .attention import (
    PROB_SCALE,
    SOFTMAXES,
    Int8Linear,
    ObservedLinear,
    _observer,
    _ops,
    _qparams,
    packed_linear,
    quantize_weight,
)

__all__ = [
    "MASK_VALUE",
    "additive_mask",
    "reference_attention",
    "ObservedBertSelfAttention",
    "Int8BertSelfAttention",
    "quantize_bert",
]

#: The additive bias of a padded key, equation (1).
MASK_VALUE = torch.finfo(torch.float32).min


def additive_mask(mask: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor | None:
    """Equation (1): the additive float32 bias for ``[batch, heads, seq, seq]`` logits, from

    * ``[B, T]`` -- the tokenizer's key-padding mask (1 / ``True``: token, 0 / ``False``: padding), int or bool;
    * ``[B, 1, T, T]`` or ``[B, 1, 1, T]`` bool -- transformers' SDPA mask (``True``: attend);
    * ``[B, 1, T, T]`` or ``[B, 1, 1, T]`` float -- already additive (returned as float32);
    * ``None`` -- no padding (returned as ``None``).

    Returns ``[B, 1, 1, T]`` (from a 2-D mask) or the 4-D shape given."""
    if mask is None:
        return None
    check_tensor("mask", mask)
    if mask.dim() == 2:
        if tuple(mask.shape) != (batch, seq):
            raise ValueError(f"mask must be [batch, seq] = [{batch}, {seq}] (the tokenizer's attention_mask), got "
                             f"{tuple(mask.shape)}")
        if mask.is_floating_point():
            raise TypeError(f"a [B, T] mask must be int or bool (1: token, 0: padding), got {mask.dtype}")
        keep = mask.bool()[:, None, None, :]
    elif mask.dim() == 4:
        if mask.shape[0] != batch or mask.shape[1] != 1 or mask.shape[2] not in (1, seq) or mask.shape[3] != seq:
            raise ValueError(f"mask must be [{batch}, 1, {seq} or 1, {seq}], got {tuple(mask.shape)}")
        if mask.is_floating_point():
            return mask.to(torch.float32)
        if mask.dtype != torch.bool:
            raise TypeError(f"a 4-D mask must be bool (True: attend) or float (additive), got {mask.dtype}")
        keep = mask
    else:
        raise ValueError(f"mask must be [B, T], [B, 1, T, T] or [B, 1, 1, T], got {tuple(mask.shape)}")
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(keep, zero, torch.tensor(MASK_VALUE, dtype=torch.float32))


def reference_attention(q, k, v, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Equations (2)-(3) in float32: ``softmax(q kᵀ · scale + bias) v`` for ``q, k, v`` ``[B, H, T, D]``,
    ``bias`` from :func:`additive_mask` (or ``None``). Returns ``[B, H, T, D]``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t)
        if t.dim() != 4 or t.dtype != torch.float32:
            raise ValueError(f"{name} must be a float32 [B, H, T, D] tensor, got {t.dtype} {tuple(t.shape)}")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k and v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    logits = torch.matmul(q, k.transpose(2, 3)) * scale
    if bias is not None:
        logits = logits + bias
    return torch.matmul(nn.functional.softmax(logits, dim=-1), v)


def _check_self_attention(name: str, attn) -> None:
    if type(attn).__name__ != "BertSelfAttention" or not all(
        isinstance(getattr(attn, n, None), nn.Linear) for n in ("query", "key", "value")
    ):
        raise TypeError(f"{name} must be a transformers BertSelfAttention, got {type(attn).__name__}")
    if getattr(attn, "is_decoder", False) or getattr(attn, "is_causal", False):
        raise TypeError(f"{name}: decoder / causal BERT attention is not supported (encoders only)")


def _check_call(encoder_hidden_states=None, cache=None, **_) -> None:
    if encoder_hidden_states is not None or cache is not None:
        raise ValueError("encoder_hidden_states and cache are not supported: the int8 BERT attention is "
                         "self-attention of an encoder")


def _heads(t: torch.Tensor, B: int, T: int, H: int, D: int) -> torch.Tensor:
    """``[B, T, H*D]`` -> ``[B, H, T, D]`` (a view)."""
    return t.view(B, T, H, D).transpose(1, 2)


class ObservedBertSelfAttention(nn.Module):
    """transformers' ``BertSelfAttention`` in float32 (:func:`reference_attention`), recording the ranges
    :class:`Int8BertSelfAttention` needs: its input ``x``, ``q`` (times the scale), ``k`` and ``v``."""

    def __init__(self, attn):
        super().__init__()
        _check_self_attention("attn", attn)
        self.attn = attn
        self.ranges = nn.ModuleDict({"x": _observer(), "q": _observer(), "k": _observer(torch.qint8),
                                     "v": _observer(torch.qint8)})

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        _check_call(**kwargs)
        a, r = self.attn, self.ranges
        B, T, _ = hidden_states.shape
        H, D = a.num_attention_heads, a.attention_head_size
        x = r["x"](hidden_states)
        q = r["q"](_heads(a.query(x), B, T, H, D) * a.scaling)
        k = r["k"](_heads(a.key(x), B, T, H, D))
        v = r["v"](_heads(a.value(x), B, T, H, D))
        ctx = reference_attention(q, k, v, additive_mask(attention_mask, B, T), 1.0)
        return ctx.transpose(1, 2).reshape(B, T, H * D), None


class Int8BertSelfAttention(nn.Module):
    """``BertSelfAttention`` with q/k/v projections and both matmuls in int8 (module docstring). Build it with
    :meth:`from_observed`; ``requant``: ``"float"`` (PyTorch's rounding) or ``"fixed"`` (integers only);
    ``softmax``: ``"torch"`` (two ``int8_bmm`` calls around ``torch.softmax``) or one fused ``int8_attention``
    call with the additive mask (``"float"``: the fixed-order float softmax; ``"int"``: I-BERT's integer one)."""

    def __init__(self, attn, qparams: dict[str, tuple[float, int]], requant: str = "float", softmax: str = "torch"):
        super().__init__()
        _check_self_attention("attn", attn)
        check_choice("requant", requant, ["float", "fixed"])
        check_choice("softmax", softmax, SOFTMAXES)
        self.softmax = softmax
        self.num_heads, self.head_dim = attn.num_attention_heads, attn.attention_head_size
        self.scaling, self.requant, self.qp = attn.scaling, requant, dict(qparams)
        for name, lin in (("q", attn.query), ("k", attn.key), ("v", attn.value)):
            w, b = lin.weight.detach().float(), lin.bias
            b = None if b is None else b.detach().float()
            if name == "q":  # c folded into W_q and b_q: q comes out of its linear already scaled
                w = w * self.scaling
                b = None if b is None else b * self.scaling
            wq, ws = quantize_weight(w)
            self.register_buffer(f"w_{name}", wq)
            self.register_buffer(f"pw_{name}", _ops().pack_linear_weight(wq))
            self.register_buffer(f"ws_{name}", ws)
            self.register_buffer(f"b_{name}", None if b is None else b.clone())

    @classmethod
    def from_observed(cls, obs: ObservedBertSelfAttention, requant: str = "float",
                      softmax: str = "torch") -> "Int8BertSelfAttention":
        return cls(obs.attn, {k: _qparams(o) for k, o in obs.ranges.items()}, requant, softmax)

    def _linear(self, xq, name, out_dtype):
        sx, zx = self.qp["x"]
        so, zo = self.qp[name]
        return packed_linear(xq, getattr(self, f"pw_{name}"), getattr(self, f"w_{name}").shape[0],
                             getattr(self, f"ws_{name}"), getattr(self, f"b_{name}"), sx, zx, self.requant, out_dtype,
                             (so, zo))

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        _check_call(**kwargs)
        ops = _ops()
        B, T, _ = hidden_states.shape
        H, D = self.num_heads, self.head_dim
        sx, zx = self.qp["x"]
        (sq, zq), (sk, zk), (sv, zv) = self.qp["q"], self.qp["k"], self.qp["v"]
        xq = ops.quantize_per_tensor(hidden_states, sx, zx, torch.uint8)
        q = _heads(self._linear(xq, "q", torch.uint8), B, T, H, D)
        k = _heads(self._linear(xq, "k", torch.int8), B, T, H, D)
        v = _heads(self._linear(xq, "v", torch.int8), B, T, H, D)
        bias = additive_mask(attention_mask, B, T)
        if self.softmax != "torch":  # q·kᵀ, mask, softmax and P·v in one call, a block of rows at a time
            ctx = ops.int8_attention(q, k, v, sq, zq, sk, zk, sv, zv, bias, 1.0, 0, torch.float32, self.softmax,
                                     self.requant)
            return ctx.transpose(1, 2).reshape(B, T, H * D), None
        logits = ops.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, self.requant)  # [B, H, T, T]
        if bias is not None:
            logits = logits + bias
        p = ops.quantize_per_tensor(logits.softmax(dim=-1), PROB_SCALE, 0, torch.uint8)
        ctx = ops.int8_bmm(p, v, PROB_SCALE, 0, sv, zv, 1.0, 0, torch.float32, False, self.requant)
        return ctx.transpose(1, 2).reshape(B, T, H * D), None

    def extra_repr(self):
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, int8: q/k/v linears, q·kᵀ, P·v; mask: additive; "
                f"softmax={self.softmax!r}")


def _bert(model):
    bert = getattr(model, "bert", None)
    if bert is None or not hasattr(bert, "encoder") or not hasattr(bert.encoder, "layer"):
        raise TypeError(f"model must be a qlab.transformer.Embedder around a transformers BertModel, got "
                        f"{type(model).__name__}")
    return bert


@torch.no_grad()
def quantize_bert(model: nn.Module, calibration: list[dict], requant: str = "float",
                  softmax: str = "torch") -> nn.Module:
    """A copy of ``model`` (a :class:`qlab.transformer.Embedder`) with every encoder ``BertSelfAttention``
    replaced by :class:`Int8BertSelfAttention` and every other encoder ``nn.Linear`` by
    :class:`~qlab.attention.Int8Linear`: the whole encoder's matmuls on qlab's int8 kernels. Embeddings,
    LayerNorm, GELU and softmax stay float32. Ranges: min/max over the ``calibration`` batches (dicts from
    :func:`qlab.transformer.tokenize`). ``softmax``: see :class:`Int8BertSelfAttention`. ``TypeError`` names a
    module it cannot convert; ``model`` is unchanged."""
    check_choice("requant", requant, ["float", "fixed"])
    check_choice("softmax", softmax, SOFTMAXES)
    bert = _bert(model)
    if not isinstance(calibration, (list, tuple)) or not calibration or not all(
        isinstance(b, dict) and {"input_ids", "attention_mask"} <= set(b) for b in calibration
    ):
        raise TypeError("calibration must be a non-empty list of tokenized batches (qlab.transformer.tokenize)")
    attn_names, lin_names = [], []
    for name, mod in bert.encoder.named_modules():
        if name.endswith("attention.self"):
            _check_self_attention(f"model.bert.encoder.{name}", mod)
            attn_names.append(f"encoder.{name}")
        elif isinstance(mod, nn.Linear) and ".attention.self." not in f".{name}":
            lin_names.append(f"encoder.{name}")
    if not attn_names:
        raise TypeError("model has no BertSelfAttention in model.bert.encoder to convert")
    m = copy.deepcopy(model).eval()
    b = _bert(m)
    for n in attn_names:
        b.set_submodule(n, ObservedBertSelfAttention(b.get_submodule(n)))
    for n in lin_names:
        b.set_submodule(n, ObservedLinear(b.get_submodule(n)))
    for batch in calibration:
        m(batch["input_ids"], batch["attention_mask"])
    for n in attn_names:
        b.set_submodule(n, Int8BertSelfAttention.from_observed(b.get_submodule(n), requant, softmax))
    for n in lin_names:
        b.set_submodule(n, Int8Linear.from_observed(b.get_submodule(n), requant))
    return m
