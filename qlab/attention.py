"""timm's ViT ``Attention`` in int8: the user's module that fails, and three eager modules that work.
Taught in ``notebooks/08-vit-attention-int8.ipynb``.

timm's ``Attention`` (non-fused path) computes, per head, with ``s = head_dim ** -0.5``::

    q, k, v = split(x @ W_qkv.T + b_qkv)                   (1)  one linear, three outputs
    P       = softmax((s * q) @ k.T)                        (2)  q·kᵀ: a batched matmul
    ctx     = P @ v                                         (3)  P·v: a batched matmul
    out     = ctx @ W_proj.T + b_proj                       (4)

Eager ``torch.ao.quantization`` turns (1) and (4) into quantized ``Linear`` s, but
(2)'s scalar multiply and both matmuls have no ``QuantizedCPU`` kernel
(:mod:`qlab.support_matrix`). The modules here:

* :class:`ReportedAttention` -- the user report's module (stubs around timm's
  ``Attention``); it fails after ``convert``, on purpose.
* :class:`DequantAttention` -- fix 1: quantized linears, and dequantize -> float32
  (2)-(3) -> quantize between them. ``s`` is folded into the q rows of ``W_qkv``
  (``s * (x W_q.T + b_q) = x (s W_q).T + s b_q``; exact when ``s`` is a power of
  two, as for head_dim 16 or 64) or, with ``qk_norm``, multiplied in float.
* :class:`FunctionalAttention` -- fix 2: ``FloatFunctional.mul_scalar`` / ``.matmul``,
  which ``convert`` turns into ``quantized::mul_scalar`` / ``quantized::matmul``.
  They accept quantized tensors, but ``quantized::matmul`` dequantizes, multiplies
  in float32 and requantizes (bit-exact with doing so by hand).
* :class:`Int8Attention` and :class:`Int8Linear` -- fix 4's eager half:
  (1)-(4) on ``qlab.kernels``: ``int8_linear`` for the projections and
  ``int8_bmm`` for both matmuls, with the scale folded into ``W_q``. Softmax,
  LayerNorm and GELU stay float32; ``P`` is quantized to uint8 with scale 1/255.
  Built from an :class:`ObservedAttention` / :class:`ObservedLinear` that recorded
  the activation ranges during calibration (min/max; ``qlab.choose_qparams``).
"""

from __future__ import annotations

import copy

import torch
from timm.layers import Attention
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

from ._checks import check_choice
from .primitives import PerChannel, choose_qparams, quantize

__all__ = [
    "Attention",
    "ReportedAttention",
    "DequantAttention",
    "FunctionalAttention",
    "ObservedLinear",
    "ObservedAttention",
    "Int8Linear",
    "Int8Attention",
    "add_residual",
    "packed_linear",
    "quantize_weight",
    "PROB_SCALE",
    "PROB_SCALES",
    "SOFTMAXES",
]

#: Scale of the quantized attention probabilities: uint8 codes 0..255 cover [0, 1], 0 and 1 exact.
PROB_SCALE = 1.0 / 255.0
#: How :class:`Int8Attention` scales P's codes: ``"calibrated"`` (the largest probability seen while calibrating,
#: over 255: flat attention over many keys keeps its small probabilities) or ``"fixed"`` (:data:`PROB_SCALE`).
PROB_SCALES = ["calibrated", "fixed"]
SOFTMAXES = ("torch", "float", "int")  # Int8Attention's softmax: unfused torch.softmax, or fused int8_attention


def _check_plain(name: str, attn) -> None:
    if getattr(attn, "gate", None) is not None:
        raise TypeError(f"{name}: gated timm Attention (gated=True) is not supported; use gated=False")


def _check_call(attn_mask, is_causal) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError(
            "attn_mask and is_causal are not supported by the int8 attention modules (ViT encoders use neither)"
        )


def _split_heads(t: torch.Tensor, B: int, N: int, H: int, D: int) -> torch.Tensor:
    """``[B, N, H*D]`` -> ``[B, H, N, D]`` (a view)."""
    return t.view(B, N, H, D).permute(0, 2, 1, 3)


def _folded_qkv(attn) -> nn.Linear:
    """A copy of ``attn.qkv`` with the softmax scale folded into its q rows (weight and bias)."""
    qkv = copy.deepcopy(attn.qkv)
    d = attn.attn_dim if hasattr(attn, "attn_dim") else attn.num_heads * attn.head_dim
    with torch.no_grad():
        qkv.weight[:d] *= attn.scale
        if qkv.bias is not None:
            qkv.bias[:d] *= attn.scale
    return qkv


# ----------------------------------------------------------------------------------------------
# The user's module


class ReportedAttention(Attention):
    """The user report's module: timm's ``Attention`` with a QuantStub and a DeQuantStub.
    Same constructor as ``timm.layers.Attention``; the forward is the report's, unchanged."""

    def __init__(self, dim, num_heads=8, **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        # quantization stubs
        self.quant = QuantStub()
        self.dequant = DeQuantStub()

    def forward(self, x):
        B, N, C = x.shape
        x = self.quant(x)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale

        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = attn @ v

        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.dequant(x)
        x = self.proj_drop(x)
        return x


# ----------------------------------------------------------------------------------------------
# Fix 1 and fix 2: eager torch.ao.quantization modules


class DequantAttention(nn.Module):
    """Fix 1: quantized qkv and proj linears; dequantize -> float32 attention -> quantize between them.

    Built from a float timm ``Attention`` (:meth:`from_timm`); prepare/convert it with
    ``torch.ao.quantization`` (``qlab.vit.eager_quantize_vit`` does). The norms and the
    dropouts carry ``qconfig = None``: they stay float.
    """

    def __init__(self, attn):
        super().__init__()
        _check_plain("attn", attn)
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = attn.scale
        self.fold = isinstance(attn.q_norm, nn.Identity)  # with qk_norm the scale comes after the norm
        self.quant = QuantStub()
        self.qkv = _folded_qkv(attn) if self.fold else copy.deepcopy(attn.qkv)
        self.dequant = DeQuantStub()
        self.q_norm, self.k_norm = copy.deepcopy(attn.q_norm), copy.deepcopy(attn.k_norm)
        self.attn_drop = copy.deepcopy(attn.attn_drop)
        self.norm = copy.deepcopy(attn.norm)
        self.quant_ctx = QuantStub()
        self.proj = copy.deepcopy(attn.proj)
        self.dequant_out = DeQuantStub()
        self.proj_drop = copy.deepcopy(attn.proj_drop)
        for m in (self.q_norm, self.k_norm, self.attn_drop, self.norm, self.proj_drop):
            m.qconfig = None

    def forward(self, x, attn_mask=None, is_causal=False):
        _check_call(attn_mask, is_causal)
        B, N, _ = x.shape
        qkv = self.dequant(self.qkv(self.quant(x)))  # int8 linear, then back to float32
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if not self.fold:
            q = q * self.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # float32
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.attn_dim)  # float32
        x = self.norm(x)
        x = self.dequant_out(self.proj(self.quant_ctx(x)))
        return self.proj_drop(x)


class FunctionalAttention(nn.Module):
    """Fix 2: everything on quantized tensors, with ``FloatFunctional`` for the scalar multiply
    and the two matmuls and ``nn.Softmax`` for the softmax (converted to ``quantized::mul_scalar``,
    ``quantized::matmul`` and ``torch.ao.nn.quantized.Softmax``)."""

    def __init__(self, attn):
        super().__init__()
        _check_plain("attn", attn)
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.attn_dim = self.num_heads * self.head_dim
        self.scale = attn.scale
        self.quant = QuantStub()
        self.qkv = copy.deepcopy(attn.qkv)
        self.q_norm, self.k_norm = copy.deepcopy(attn.q_norm), copy.deepcopy(attn.k_norm)
        self.mul_scale = FloatFunctional()  # q * scale
        self.qk = FloatFunctional()  # q @ k.T
        self.softmax = nn.Softmax(dim=-1)
        self.attn_drop = copy.deepcopy(attn.attn_drop)
        self.av = FloatFunctional()  # attn @ v
        self.norm = copy.deepcopy(attn.norm)
        self.proj = copy.deepcopy(attn.proj)
        self.dequant = DeQuantStub()
        self.proj_drop = copy.deepcopy(attn.proj_drop)

    def forward(self, x, attn_mask=None, is_causal=False):
        _check_call(attn_mask, is_causal)
        B, N, _ = x.shape
        qkv = self.qkv(self.quant(x))
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        q = self.mul_scale.mul_scalar(q, self.scale)
        # mul_scalar observes nothing (quantized::mul_scalar just rescales); observing its output
        # keeps convert from warning about an observer that never ran. After convert: an Identity.
        q = self.mul_scale.activation_post_process(q)
        attn = self.softmax(self.qk.matmul(q, k.transpose(-2, -1)))
        attn = self.attn_drop(attn)
        x = self.av.matmul(attn, v).transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        return self.proj_drop(self.dequant(self.proj(x)))


# ----------------------------------------------------------------------------------------------
# Fix 4, eager: qlab's int8 kernels


def _observer(dtype=torch.quint8):
    """The running min/max of what passes (calibration), affine ``dtype``: qlab's ``MinMaxObserver``."""
    from .observers import MinMaxObserver

    return MinMaxObserver(dtype=dtype)


def _qparams(obs) -> tuple[float, int]:
    scale, zero_point = obs.calculate_qparams()
    return float(scale), int(zero_point)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric int8 weights (the x86 qconfig's weight observer): ``(codes, scales)``."""
    s, z = choose_qparams(w.amin(1), w.amax(1), dtype=torch.qint8, symmetric=True)
    return quantize(w, s, z, torch.qint8, PerChannel(0)), s.to(torch.float32)


def _ops():
    """``torch.ops.qlab``, after loading (or building) the C++ extension. The modules call the ops directly:
    the typed wrappers of :mod:`qlab.kernels` would check arguments that were checked at conversion time."""
    import qlab.kernels  # noqa: F401 -- loads (or builds) the C++ extension, registers torch.ops.qlab.*

    return torch.ops.qlab


class ObservedLinear(nn.Module):
    """A float ``nn.Linear`` that records the range of its input (calibration)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.x = _observer()

    def forward(self, x):
        return self.linear(self.x(x))


def packed_linear(x, packed, n_out, w_scale, bias, sx, zx, requant, out_dtype=torch.float32, out=(1.0, 0),
                  table=None, residual=None):
    """One ``int8_linear_packed`` call on a weight packed at conversion (``pack_linear_weight``): what every
    int8 module here runs. Same integers as ``int8_linear`` on the unpacked weight; ``residual`` (float32 out):
    ``+ residual`` in the same pass."""
    return _ops().int8_linear_packed(x, packed, n_out, w_scale, bias, sx, zx, out[0], out[1], out_dtype, False,
                                     table, requant, residual)


def add_residual(layer, dropout: nn.Module, residual):
    """``residual + dropout(layer(r))`` with the add in ``layer``'s epilogue when the dropout does nothing:
    ``layer(r)`` computes ``y + r`` in its last pass (one float32 add, the bits of ``residual + y``)."""
    if residual is None:
        return dropout(layer(None))
    if dropout.training and getattr(dropout, "p", 0.0) > 0:
        return residual + dropout(layer(None))
    return layer(residual)


class Int8Linear(nn.Module):
    """``x @ W.T + b`` with ``qlab.kernels.int8_linear_packed``: x quantized to uint8 (calibrated, per tensor),
    W int8 per channel (symmetric, kept as ``weight`` and packed once as ``packed_weight``), float bias added as
    fbgemm does; float32 out."""

    def __init__(self, linear: nn.Linear, x_scale: float, x_zero_point: int, requant: str = "float"):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w, ws = quantize_weight(linear.weight.detach().float())
        self.register_buffer("weight", w)
        self.register_buffer("packed_weight", _ops().pack_linear_weight(w))
        self.register_buffer("weight_scale", ws)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.x_scale, self.x_zero_point, self.requant = x_scale, x_zero_point, requant

    @classmethod
    def from_observed(cls, obs: ObservedLinear, requant: str = "float") -> "Int8Linear":
        return cls(obs.linear, *_qparams(obs.x), requant=requant)

    def forward(self, x):
        xq = _ops().quantize_per_tensor(x, self.x_scale, self.x_zero_point, torch.uint8)
        return packed_linear(xq, self.packed_weight, self.out_features, self.weight_scale, self.bias, self.x_scale,
                             self.x_zero_point, self.requant)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"x: uint8 (scale={self.x_scale:.4g}, zp={self.x_zero_point})")


class ObservedAttention(nn.Module):
    """timm's ``Attention`` in float32, recording the ranges :class:`Int8Attention` needs:
    its input ``x``, ``q`` (scaled), ``k``, ``v``, the probabilities ``p`` and the projection's input ``ctx``."""

    def __init__(self, attn):
        super().__init__()
        _check_plain("attn", attn)
        self.attn = attn
        self.ranges = nn.ModuleDict(
            {
                "x": _observer(),
                "q": _observer(),
                "k": _observer(torch.qint8),
                "v": _observer(torch.qint8),
                "p": _observer(),
                "ctx": _observer(),
            }
        )

    def forward(self, x, attn_mask=None, is_causal=False):
        _check_call(attn_mask, is_causal)
        a, r = self.attn, self.ranges
        B, N, _ = x.shape
        qkv = a.qkv(r["x"](x))
        q, k, v = qkv.reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        q = r["q"](q * a.scale)
        r["k"](k)
        r["v"](v)
        attn = a.attn_drop(r["p"]((q @ k.transpose(-2, -1)).softmax(dim=-1)))
        ctx = a.norm((attn @ v).transpose(1, 2).reshape(B, N, a.num_heads * a.head_dim))
        return a.proj_drop(a.proj(r["ctx"](ctx)))


class Int8Attention(nn.Module):
    """timm's ``Attention`` with both matmuls and all three projections in int8 (qlab.kernels).

    ::

        xq        = quantize(x)                                   uint8
        q         = int8_linear(xq, s·W_q, s·b_q) -> uint8        (k, v -> int8; s folded)
        logits    = int8_bmm(q, k, transpose_b=True) -> float32   acc · s_q · s_k
        P         = softmax(logits) -> uint8, scale p_scale         (1/255, or calibrated: max P seen / 255)
        ctx       = int8_bmm(P, v) -> uint8                       requantized in the kernel
        out       = int8_linear(ctx, W_proj, b_proj) -> float32

    Every linear runs ``int8_linear_packed`` on a weight packed here, once (``w_*`` keep the plain codes).

    With ``qk_norm`` q and k leave their linears in float32, pass the norms (and ``q`` the
    scale) and are quantized after; with ``scale_norm`` ctx leaves the second matmul in
    float32 for the norm. Build it with :meth:`from_observed` after calibration.

    ``softmax`` chooses the middle three lines (notebook 12): ``"torch"`` runs them as written (two
    ``int8_bmm`` calls around ``torch.softmax``, the float scores in memory); ``"float"`` and ``"int"`` run them
    as one ``int8_attention`` call (the fixed-order float softmax, or I-BERT's integer one), a block of rows at a
    time (a training-mode ``attn_drop`` with ``p > 0`` falls back to ``"torch"``).
    """

    fuses_residual = True  # forward(..., residual=r) adds r in proj's epilogue (qlab.int8_block)

    def __init__(self, attn, qparams: dict[str, tuple[float, int]], requant: str = "float", softmax: str = "torch",
                 prob_scale: str = "calibrated"):
        super().__init__()
        _check_plain("attn", attn)
        check_choice("softmax", softmax, SOFTMAXES)
        check_choice("prob_scale", prob_scale, PROB_SCALES)
        self.softmax = softmax
        # P's codes: 1/255, or the largest probability seen while calibrating over 255 (never coarser than 1/255; the
        # integer softmax makes codes of 1/255 only)
        calibrated = prob_scale == "calibrated" and softmax != "int" and "p" in qparams
        self.p_scale = min(qparams["p"][0], PROB_SCALE) if calibrated else PROB_SCALE
        H, D = attn.num_heads, attn.head_dim
        C = H * D
        self.num_heads, self.head_dim, self.attn_dim = H, D, C
        self.scale = attn.scale
        self.qk_norm = not isinstance(attn.q_norm, nn.Identity)
        self.scale_norm = not isinstance(attn.norm, nn.Identity)
        self.requant = requant
        self.qp = dict(qparams)  # name -> (scale, zero_point); k, v: int8 zero points
        w = attn.qkv.weight.detach().float()
        b = None if attn.qkv.bias is None else attn.qkv.bias.detach().float()
        wq, wk, wv = w[:C].clone(), w[C : 2 * C], w[2 * C :]
        bq, bk, bv = (None, None, None) if b is None else (b[:C].clone(), b[C : 2 * C], b[2 * C :])
        if not self.qk_norm:  # fold the softmax scale into the q projection
            wq *= self.scale
            if bq is not None:
                bq *= self.scale
        for name, (wt, bt) in {"q": (wq, bq), "k": (wk, bk), "v": (wv, bv)}.items():
            codes, scales = quantize_weight(wt)
            self.register_buffer(f"w_{name}", codes)
            self.register_buffer(f"pw_{name}", _ops().pack_linear_weight(codes))
            self.register_buffer(f"ws_{name}", scales)
            self.register_buffer(f"b_{name}", None if bt is None else bt.contiguous())
        codes, scales = quantize_weight(attn.proj.weight.detach().float())
        self.register_buffer("w_proj", codes)
        self.register_buffer("pw_proj", _ops().pack_linear_weight(codes))
        self.register_buffer("ws_proj", scales)
        self.register_buffer("b_proj", None if attn.proj.bias is None else attn.proj.bias.detach().float().clone())
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.attn_drop, self.norm, self.proj_drop = attn.attn_drop, attn.norm, attn.proj_drop

    @classmethod
    def from_observed(cls, obs: ObservedAttention, requant: str = "float", softmax: str = "torch",
                      prob_scale: str = "calibrated") -> "Int8Attention":
        return cls(obs.attn, {name: _qparams(o) for name, o in obs.ranges.items()}, requant, softmax, prob_scale)

    def _linear(self, x, name, sx, zx, out_dtype=torch.float32, out=(1.0, 0), residual=None):
        w = getattr(self, f"w_{name}")
        return packed_linear(x, getattr(self, f"pw_{name}"), w.shape[0], getattr(self, f"ws_{name}"),
                             getattr(self, f"b_{name}"), sx, zx, self.requant, out_dtype, out, residual=residual)

    def forward(self, x, attn_mask=None, is_causal=False, residual=None):
        """timm's ``Attention.forward``; ``residual``: returns ``residual + attention(x)``, the add in ``proj``'s
        epilogue (:class:`~qlab.int8_block.Int8Block`)."""
        _check_call(attn_mask, is_causal)
        ops = _ops()
        B, N, _ = x.shape
        H, D, C = self.num_heads, self.head_dim, self.attn_dim
        qp = self.qp
        sx, zx = qp["x"]
        (sq, zq), (sk, zk), (sv, zv), (sc, zc) = qp["q"], qp["k"], qp["v"], qp["ctx"]
        xq = _ops().quantize_per_tensor(x, sx, zx, torch.uint8)
        if self.qk_norm:
            q = self.q_norm(_split_heads(self._linear(xq, "q", sx, zx), B, N, H, D)) * self.scale
            k = self.k_norm(_split_heads(self._linear(xq, "k", sx, zx), B, N, H, D))
            q = _ops().quantize_per_tensor(q, sq, zq, torch.uint8)
            k = _ops().quantize_per_tensor(k, sk, zk, torch.int8)
        else:
            q = _split_heads(self._linear(xq, "q", sx, zx, torch.uint8, (sq, zq)), B, N, H, D)
            k = _split_heads(self._linear(xq, "k", sx, zx, torch.int8, (sk, zk)), B, N, H, D)
        v = _split_heads(self._linear(xq, "v", sx, zx, torch.int8, (sv, zv)), B, N, H, D)
        dropout = self.training and getattr(self.attn_drop, "p", 0.0) > 0
        if self.softmax != "torch" and not dropout:  # one fused op: q·kᵀ, softmax, P·v
            out_dtype, (so, zo) = (torch.float32, (1.0, 0)) if self.scale_norm else (torch.uint8, (sc, zc))
            ctx = ops.int8_attention(q, k, v, sq, zq, sk, zk, sv, zv, None, so, zo, out_dtype, self.softmax,
                                     self.requant, self.p_scale)
            ctx = ctx.transpose(1, 2).reshape(B, N, C)
            if self.scale_norm:
                ctx = _ops().quantize_per_tensor(self.norm(ctx), sc, zc, torch.uint8)
            return self._project(ctx, residual)
        logits = ops.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, self.requant)  # [B, H, N, N]
        p = self.attn_drop(logits.softmax(dim=-1))
        p = _ops().quantize_per_tensor(p, self.p_scale, 0, torch.uint8)
        if self.scale_norm:
            ctx = ops.int8_bmm(p, v, self.p_scale, 0, sv, zv, 1.0, 0, torch.float32, False, self.requant)
            ctx = self.norm(ctx.transpose(1, 2).reshape(B, N, C))
            ctx = _ops().quantize_per_tensor(ctx, sc, zc, torch.uint8)
        else:
            ctx = ops.int8_bmm(p, v, self.p_scale, 0, sv, zv, sc, zc, torch.uint8, False, self.requant)
            ctx = ctx.transpose(1, 2).reshape(B, N, C)
        return self._project(ctx, residual)

    def _project(self, ctx: torch.Tensor, residual) -> torch.Tensor:
        """``proj`` on the context codes, with the skip connection added in its epilogue when given."""
        sc, zc = self.qp["ctx"]
        return add_residual(lambda r: self._linear(ctx, "proj", sc, zc, residual=r), self.proj_drop, residual)

    def extra_repr(self):
        norms = ", qk_norm" * self.qk_norm + ", scale_norm" * self.scale_norm
        return (f"heads={self.num_heads}, head_dim={self.head_dim}{norms}, int8: q/k/v/proj linears, q·kᵀ, P·v, "
                f"softmax={self.softmax!r}, P codes of {self.p_scale:.4g}")
