"""Argument checks shared by the Python wrappers, the fake kernels and the reference ops.

Every message names the argument and what is allowed (``qlab/_checks.py`` style).
``check_values=False`` skips what needs tensor *data* (a positive weight scale,
a finite bias): fake kernels and traced code only see shapes and dtypes. The C++
ops repeat these checks, so nothing unchecked reaches a kernel.
"""

from __future__ import annotations

import torch

from .._checks import check_choice, check_tensor
from ..primitives import INT_RANGES

QRANGE = {d: INT_RANGES[d] for d in (torch.uint8, torch.int8)}  # the 8-bit codes the ops take
OUT_DTYPES = [torch.uint8, torch.int8, torch.int32, torch.float32]
REQUANT = ["float", "fixed"]


def _cpu(name: str, t: torch.Tensor) -> None:
    if t.device.type not in ("cpu", "meta"):
        raise ValueError(f"{name} must be on the CPU (device 'cpu'), got device '{t.device}'")


def _activation(name: str, t) -> None:
    check_tensor(name, t)
    _cpu(name, t)
    if t.dtype not in QRANGE:
        raise TypeError(f"{name} must have dtype torch.uint8 or torch.int8, got {t.dtype}")


def _int8(name: str, t) -> None:
    check_tensor(name, t)
    _cpu(name, t)
    if t.dtype != torch.int8:
        raise TypeError(f"{name} must have dtype torch.int8, got {t.dtype}")


# A positive double rounds to a positive finite float32 iff it lies in (2^-150, FLT_MAX + half an ulp).
_F32_TINY = 2.0**-150
_F32_HUGE = 3.4028235677973366e38


def scale_f32(name: str, s) -> float:
    """A positive finite Python float that stays positive and finite when rounded to float32."""
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(s).__name__}")
    if not _F32_TINY < s < _F32_HUGE:  # also false for NaN
        raise ValueError(f"{name} must be a positive finite float (representable in float32), got {float(s):g}")
    return float(s)


def zero_point_in(name: str, z, dtype) -> int:
    lo, hi = QRANGE[dtype]
    if isinstance(z, bool) or not isinstance(z, int):
        raise TypeError(f"{name} must be an int, got {type(z).__name__}")
    if not lo <= z <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}] for {dtype}, got {z}")
    return z


def python_types(**args) -> None:
    """The wrappers' check: the arguments the op's schema types (``Tensor``, ``float``, ``int``, ``bool``,
    ``str``) have those Python types, so that a wrong one is a ``TypeError`` naming it rather than the
    dispatcher's cast error. Values, shapes and dtypes are the op's to check (C++ or the reference)."""
    for name, (value, kind) in args.items():
        if kind == "tensor" and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if kind == "tensor?" and value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
        if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if kind == "bool" and not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        if kind == "str" and not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if kind == "dtype" and not isinstance(value, torch.dtype):
            raise TypeError(f"{name} must be a torch.dtype, got {type(value).__name__}")


def _output(out_dtype, requant, out_scale, out_zero_point) -> None:
    check_choice("out_dtype", out_dtype, OUT_DTYPES)
    check_choice("requant", requant, REQUANT)
    if out_dtype in QRANGE:
        scale_f32("out_scale", out_scale)
        zero_point_in("out_zero_point", out_zero_point, out_dtype)


def _ok_scale(s) -> bool:
    return type(s) is float and _F32_TINY < s < _F32_HUGE


def _ok_zp(z, dtype) -> bool:
    lo, hi = QRANGE[dtype]
    return type(z) is int and lo <= z <= hi


def _ok_output(out_dtype, requant, out_scale, out_zero_point) -> bool:
    if requant not in ("float", "fixed"):
        return False
    if out_dtype in QRANGE:
        return _ok_scale(out_scale) and _ok_zp(out_zero_point, out_dtype)
    return out_dtype is torch.int32 or out_dtype is torch.float32


def bmm_args(
    a, b, a_scale, a_zero_point, b_scale, b_zero_point, out_scale, out_zero_point, out_dtype, transpose_b, requant
) -> tuple:
    """Check ``int8_bmm``'s arguments; return ``(M, N, K)``."""
    # Fast path: one cheap test of the usual case (these calls sit in inference loops).
    # Anything unusual goes through the detailed checks below, which say what is wrong.
    if (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.dtype in QRANGE
        and b.dtype is torch.int8
        and a.is_cpu
        and b.is_cpu
        and a.dim() >= 2
        and a.dim() == b.dim()
        and type(transpose_b) is bool
        and _ok_scale(a_scale)
        and _ok_scale(b_scale)
        and _ok_zp(a_zero_point, a.dtype)
        and _ok_zp(b_zero_point, torch.int8)
        and _ok_output(out_dtype, requant, out_scale, out_zero_point)
    ):
        sa, sb = a.shape, b.shape
        kb, n = (sb[-1], sb[-2]) if transpose_b else (sb[-2], sb[-1])
        if kb == sa[-1] and sa[:-2] == sb[:-2]:
            return sa[-2], n, sa[-1]
    _activation("a", a)
    _int8("b", b)
    if a.dim() < 2:
        raise ValueError(f"a must have at least 2 dimensions [..., M, K], got shape {tuple(a.shape)}")
    if b.dim() != a.dim():
        raise ValueError(f"b must have as many dimensions as a ({a.dim()}), got shape {tuple(b.shape)}")
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(
            f"a and b must have the same batch dimensions, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not isinstance(transpose_b, bool):
        raise TypeError(f"transpose_b must be a bool, got {type(transpose_b).__name__}")
    M, K = a.shape[-2], a.shape[-1]
    Kb, N = (b.shape[-1], b.shape[-2]) if transpose_b else (b.shape[-2], b.shape[-1])
    if Kb != K:
        layout = "[..., N, K]" if transpose_b else "[..., K, N]"
        raise ValueError(
            f"b must have shape {layout} with K = a.shape[-1] = {K} (transpose_b={transpose_b}), got shape "
            f"{tuple(b.shape)}"
        )
    scale_f32("a_scale", a_scale)
    scale_f32("b_scale", b_scale)
    zero_point_in("a_zero_point", a_zero_point, a.dtype)
    zero_point_in("b_zero_point", b_zero_point, torch.int8)
    _output(out_dtype, requant, out_scale, out_zero_point)
    return M, N, K


def linear_args(
    x,
    weight,
    weight_scale,
    bias,
    x_scale,
    x_zero_point,
    out_scale,
    out_zero_point,
    out_dtype,
    relu,
    requant,
    *,
    check_values: bool = True,
) -> tuple:
    """Check ``int8_linear``'s arguments; return ``(N, K, per_channel)``."""
    if (  # fast path, as in bmm_args
        not check_values
        and isinstance(x, torch.Tensor)
        and isinstance(weight, torch.Tensor)
        and isinstance(weight_scale, torch.Tensor)
        and x.dtype in QRANGE
        and weight.dtype is torch.int8
        and weight_scale.dtype is torch.float32
        and x.is_cpu
        and weight.is_cpu
        and weight_scale.is_cpu
        and weight.dim() == 2
        and x.dim() >= 1
        and weight_scale.dim() <= 1
        and type(relu) is bool
        and _ok_scale(x_scale)
        and _ok_zp(x_zero_point, x.dtype)
        and _ok_output(out_dtype, requant, out_scale, out_zero_point)
        and (
            bias is None
            or (
                isinstance(bias, torch.Tensor)
                and bias.is_cpu
                and bias.dim() == 1
                and (
                    bias.dtype is torch.int32
                    or (bias.dtype is torch.float32 and requant == "float" and out_dtype is not torch.int32)
                )
            )
        )
    ):
        N, K = weight.shape
        if (
            x.shape[-1] == K
            and (weight_scale.dim() == 0 or weight_scale.shape[0] == N)
            and (bias is None or bias.shape[0] == N)
        ):
            return N, K, weight_scale.dim() == 1
    _activation("x", x)
    _int8("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [out_features, in_features], got shape {tuple(weight.shape)}")
    N, K = weight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(
            f"x must have shape [..., in_features] with in_features = weight.shape[1] = {K}, got shape {tuple(x.shape)}"
        )
    check_tensor("weight_scale", weight_scale)
    _cpu("weight_scale", weight_scale)
    if weight_scale.dtype != torch.float32:
        raise TypeError(f"weight_scale must have dtype torch.float32, got {weight_scale.dtype}")
    per_channel = weight_scale.dim() == 1
    if not (weight_scale.dim() == 0 or (per_channel and weight_scale.shape[0] == N)):
        raise ValueError(
            f"weight_scale must be a 0-d tensor (per-tensor) or have shape [out_features] = [{N}] (per-channel), "
            f"got shape {tuple(weight_scale.shape)}"
        )
    if check_values and not bool(((weight_scale > 0) & torch.isfinite(weight_scale)).all()):
        raise ValueError(f"weight_scale must be positive and finite, got {weight_scale.tolist()}")
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    scale_f32("x_scale", x_scale)
    zero_point_in("x_zero_point", x_zero_point, x.dtype)
    _output(out_dtype, requant, out_scale, out_zero_point)
    if bias is not None:
        check_tensor("bias", bias)
        _cpu("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"bias must have shape [out_features] = [{N}], got shape {tuple(bias.shape)}")
        if bias.dtype == torch.float32:
            if out_dtype == torch.int32 or (out_dtype in QRANGE and requant == "fixed"):
                raise ValueError(
                    "a torch.float32 bias (PyTorch's convention) needs requant='float' and out_dtype torch.uint8, "
                    "torch.int8 or torch.float32; use an int32 bias with requant='fixed' or out_dtype=torch.int32"
                )
            if check_values and not bool(torch.isfinite(bias).all()):
                raise ValueError("bias must be finite")
        elif bias.dtype != torch.int32:
            raise TypeError(f"bias must have dtype torch.int32 or torch.float32, got {bias.dtype}")
    return N, K, per_channel


def packed_weight_args(weight) -> None:
    """``pack_linear_weight``: an int8 ``[out_features, in_features]`` weight on the CPU."""
    _int8("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [out_features, in_features], got shape {tuple(weight.shape)}")


def packed_args(packed, out_features, in_features) -> None:
    """A packed weight of ``[out_features, in_features]``: a contiguous 1-D int8 tensor of the right length."""
    check_tensor("packed_weight", packed)
    _cpu("packed_weight", packed)
    if packed.dtype != torch.int8:
        raise TypeError(f"packed_weight must have dtype torch.int8, got {packed.dtype}")
    if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"out_features must be >= 1, got {out_features!r}")
    n_bytes = 64 + (out_features + 47) // 48 * (((max(in_features, 1) + 63) // 64 * 64) * 48 + 192)
    if packed.dim() != 1 or packed.shape[0] != n_bytes or not packed.is_contiguous():
        raise ValueError(_packed_message(out_features, in_features, n_bytes, packed))


def packed_header(packed, out_features, in_features) -> None:
    """The header pack_linear_weight wrote says ``[out_features, in_features]`` (a real tensor, not a fake one)."""
    head = packed[:12].view(torch.int32).tolist()
    if head != [0x31424C51, out_features, in_features]:
        raise ValueError(_packed_message(out_features, in_features, packed.shape[0], packed)
                         + f" packed for [{head[1]}, {head[2]}]")


def _packed_message(N, K, n_bytes, packed) -> str:
    return (
        f"packed_weight must be pack_linear_weight(weight) of a weight [out_features, in_features] = [{N}, {K}] "
        f"(in_features = x.shape[-1]): a contiguous 1-D int8 tensor of {n_bytes} bytes whose header says [{N}, {K}]; "
        f"got shape {list(packed.shape)}" + ("" if packed.is_contiguous() else " (not contiguous)")
    )


def table_arg(table, out_dtype) -> None:
    """``int8_linear_packed``'s ``table``: None, or 256 uint8/int8 codes after an 8-bit output."""
    if table is None:
        return
    check_tensor("table", table)
    _cpu("table", table)
    if out_dtype not in QRANGE:
        raise ValueError(
            f"table maps 8-bit output codes: it needs out_dtype torch.uint8 or torch.int8, got {out_dtype}"
        )
    if table.dtype not in QRANGE:
        raise TypeError(f"table must have dtype torch.uint8 or torch.int8, got {table.dtype}")
    if tuple(table.shape) != (256,):
        raise ValueError(f"table must have shape [256], got shape {list(table.shape)}")


def packed_linear_args(x, packed, out_features, out_dtype, table, residual=None) -> None:
    """What ``int8_linear_packed`` adds to ``int8_linear``'s checks: x, the packed weight, the table, the residual."""
    _activation("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension [..., in_features]")
    packed_args(packed, out_features, x.shape[-1])
    check_choice("out_dtype", out_dtype, OUT_DTYPES)
    table_arg(table, out_dtype)
    if residual is not None:
        check_tensor("residual", residual)
        _cpu("residual", residual)
        if out_dtype != torch.float32:
            raise ValueError(
                f"residual is added to a float32 output: it needs out_dtype torch.float32, got {out_dtype}"
            )
        if residual.dtype != torch.float32:
            raise TypeError(f"residual must have dtype torch.float32, got {residual.dtype}")
        want = [*x.shape[:-1], out_features]
        if list(residual.shape) != want:
            raise ValueError(
                f"residual must have the output's shape [..., out_features] = {want}, got shape {list(residual.shape)}"
            )


def quantize_args(x, scale, zero_point, dtype) -> None:
    """``quantize_per_tensor``: float32 ``x`` on the CPU, a float32-representable scale, an 8-bit dtype and its zero
    point."""
    check_tensor("x", x)
    _cpu("x", x)
    if x.dtype != torch.float32:
        raise TypeError(f"x must have dtype torch.float32, got {x.dtype}")
    check_choice("dtype", dtype, list(QRANGE))
    scale_f32("scale", scale)
    zero_point_in("zero_point", zero_point, dtype)
