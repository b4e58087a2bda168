"""timm's ``Mlp`` (fc1 -> GELU -> fc2) in int8 with the GELU as a 256-entry table on fc1's output codes.
Taught in ``notebooks/12-inside-an-int8-kernel.ipynb`` (equation (3)).

When GELU's input is requantized per tensor -- ``g = s_g (c − z_g)``, an 8-bit code ``c`` -- and its output is
quantized for fc2 (scale ``s_h``, zero point ``z_h``), the whole activation is a function of 256 codes::

    (3)  table[c − min] = clamp(round(GELU(s_g (c − z_g)) / s_h) + z_h, qmin, qmax)

computed once, in float32 as PyTorch's dequantize -> GELU -> quantize chain (so the lookup equals that chain bit for
bit). :class:`Int8Mlp` runs::

    xq = quantize(x)                                                     uint8   (s_x, z_x)
    h  = table[int8_linear_packed(xq, W1, b1) -> uint8 at (s_g, z_g)]    uint8   (s_h, z_h), in fc1's epilogue
    y  = int8_linear_packed(h, W2, b2) -> float32

no float32 hidden activation is ever written (three passes fewer over ``tokens × 4·dim`` than fc1 -> float32 GELU ->
quantize). What it costs is one more rounding: GELU sees fc1's output on a 256-level grid (notebook 12 measures it).
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_positive_scale, check_tensor, check_zero_point
from .attention import _observer, _ops, _qparams, add_residual, packed_linear, quantize_weight
from .primitives import dequantize, qrange, quantize

__all__ = ["gelu_table", "lookup", "ObservedMlp", "Int8Mlp", "supported_mlp"]


def gelu_table(in_scale: float, in_zero_point: int, out_scale: float, out_zero_point: int,
               in_dtype: torch.dtype = torch.uint8, out_dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Equation (3): the 256 output codes, indexed by ``code - min(in_dtype)``. The arithmetic is float32 as
    PyTorch's dequantize -> GELU -> quantize_per_tensor, so ``lookup`` equals that chain bit for bit."""
    for name, dt in (("in_dtype", in_dtype), ("out_dtype", out_dtype)):
        if dt not in (torch.uint8, torch.int8):
            raise TypeError(f"{name} must be torch.uint8 or torch.int8, got {dt}")
    check_positive_scale("in_scale", in_scale)
    check_positive_scale("out_scale", out_scale)
    check_zero_point("in_zero_point", in_zero_point, *qrange(in_dtype))
    check_zero_point("out_zero_point", out_zero_point, *qrange(out_dtype))
    lo, hi = qrange(in_dtype)
    codes = torch.arange(lo, hi + 1, dtype=torch.int32).to(in_dtype)
    qo = torch.quint8 if out_dtype == torch.uint8 else torch.qint8
    x = dequantize(codes, in_scale, in_zero_point)
    return quantize(nn.functional.gelu(x), out_scale, out_zero_point, qo)


def lookup(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``table[codes]`` for 8-bit ``codes`` (int8 codes index from -128)."""
    check_tensor("codes", codes)
    if codes.dtype not in (torch.uint8, torch.int8) or table.shape != (256,):
        raise TypeError(f"codes must be uint8/int8 and table a 256-entry tensor, got {codes.dtype}, "
                        f"{tuple(table.shape)}")
    return table[codes.long() - qrange(codes.dtype)[0]]


def supported_mlp(module: nn.Module) -> bool:
    """A timm ``Mlp`` this module converts: fc1 -> exact ``nn.GELU`` -> (dropout) -> no norm -> fc2."""
    from timm.layers import Mlp

    return (
        type(module) is Mlp
        and isinstance(module.fc1, nn.Linear)
        and isinstance(module.fc2, nn.Linear)
        and type(module.act) is nn.GELU
        and module.act.approximate == "none"
        and isinstance(module.norm, nn.Identity)
    )


class ObservedMlp(nn.Module):
    """A float timm ``Mlp`` that records the ranges of fc1's input ``x``, GELU's input ``g`` and fc2's input ``h``."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        if not supported_mlp(mlp):
            raise TypeError(f"mlp must be a timm Mlp with fc1, an exact nn.GELU, no norm and fc2, got {mlp!r}")
        self.mlp = mlp
        self.ranges = nn.ModuleDict({"x": _observer(), "g": _observer(), "h": _observer()})

    def forward(self, x):
        m, r = self.mlp, self.ranges
        h = r["h"](m.drop1(m.act(r["g"](m.fc1(r["x"](x))))))
        return m.drop2(m.fc2(h))


class Int8Mlp(nn.Module):
    """fc1 -> GELU -> fc2 in int8: the GELU is fc1's epilogue, a table on its requantized codes (module docstring).
    Build it with :meth:`from_observed` after calibration."""

    fuses_residual = True  # forward(x, residual=r) adds r in fc2's epilogue (qlab.int8_block)

    def __init__(self, mlp: nn.Module, qparams: dict[str, tuple[float, int]], requant: str = "float"):
        super().__init__()
        self.qp, self.requant = dict(qparams), requant
        self.drop2 = mlp.drop2
        for name, lin in (("fc1", mlp.fc1), ("fc2", mlp.fc2)):
            w, ws = quantize_weight(lin.weight.detach().float())
            self.register_buffer(f"w_{name}", w)
            self.register_buffer(f"pw_{name}", _ops().pack_linear_weight(w))
            self.register_buffer(f"ws_{name}", ws)
            self.register_buffer(f"b_{name}", None if lin.bias is None else lin.bias.detach().float().clone())
        self.register_buffer("table", gelu_table(*self.qp["g"], *self.qp["h"]))

    @classmethod
    def from_observed(cls, obs: ObservedMlp, requant: str = "float") -> "Int8Mlp":
        return cls(obs.mlp, {name: _qparams(o) for name, o in obs.ranges.items()}, requant)

    def forward(self, x, residual=None):
        """fc1 -> table -> fc2; ``residual``: returns ``residual + mlp(x)``, the add in fc2's epilogue
        (:class:`~qlab.int8_block.Int8Block`)."""
        (sx, zx), (sg, zg), (sh, zh) = self.qp["x"], self.qp["g"], self.qp["h"]
        xq = _ops().quantize_per_tensor(x, sx, zx, torch.uint8)
        h = packed_linear(xq, self.pw_fc1, self.w_fc1.shape[0], self.ws_fc1, self.b_fc1, sx, zx, self.requant,
                          torch.uint8, (sg, zg), self.table)
        return add_residual(lambda r: packed_linear(h, self.pw_fc2, self.w_fc2.shape[0], self.ws_fc2, self.b_fc2,
                                                    sh, zh, self.requant, residual=r), self.drop2, residual)

    def extra_repr(self):
        (sg, zg), (sh, zh) = self.qp["g"], self.qp["h"]
        return (f"fc1 {tuple(self.w_fc1.shape[::-1])} -> GELU table (uint8 {sg:.4g}, {zg} -> {sh:.4g}, {zh}) "
                f"-> fc2 {tuple(self.w_fc2.shape[::-1])}")
