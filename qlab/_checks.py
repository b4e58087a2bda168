"""Argument validation shared by every public qlab function.

Each helper raises a ``TypeError`` or ``ValueError`` whose message names the
argument and says what is allowed, so a learner's mistake never reaches a
kernel (where it could crash or silently produce garbage).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

__all__ = [
    "check_int",
    "check_number",
    "check_bool",
    "check_tensor",
    "check_float_tensor",
    "check_positive_scale",
    "check_zero_point",
    "check_bits",
    "check_axis",
    "check_finite",
    "check_choice",
]


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def check_int(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """An int (not a bool) in ``[lo, hi]`` (either bound may be ``None``)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int{_bounds(lo, hi)}, got {type(v).__name__} {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be an int{_bounds(lo, hi)}, got {v}")
    return v


def check_number(
    name: str, v, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """A finite real number (int or float, not a bool) in the interval given by ``lo``/``hi``;
    ``lo_open``/``hi_open`` exclude the bound itself. Returns it as a float."""
    what = f"a finite number{_bounds(lo, hi, lo_open, hi_open)}"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be {what}, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be {what}, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {what}, got {v}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{name} must be {what}, got {v}")
    return v


def check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {type(v).__name__} {v!r}")
    return v


def check_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float_tensor(name: str, x) -> torch.Tensor:
    check_tensor(name, x)
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must have dtype torch.float32, got {x.dtype}")
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(f"{name} contains {bad}; only finite values are allowed")
    return x


def check_positive_scale(name: str, scale) -> torch.Tensor | float:
    """Scale: a positive finite float, or a 1-D float tensor of them."""
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {scale.dtype}")
        if scale.dim() > 1:
            raise ValueError(f"{name} must be a scalar or 1-D tensor, got shape {tuple(scale.shape)}")
        if scale.numel() and not bool(((scale > 0) & torch.isfinite(scale)).all()):
            raise ValueError(f"{name} must be positive and finite, got {scale.tolist()}")
        return scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} must be positive and finite, got {scale}")
    return float(scale)


def check_zero_point(name: str, zero_point, qmin: int, qmax: int):
    """Zero point: an integer in [qmin, qmax], or a 1-D integer tensor of them."""
    if isinstance(zero_point, torch.Tensor):
        if zero_point.is_floating_point() or zero_point.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {zero_point.dtype}")
        if zero_point.dim() > 1:
            raise ValueError(f"{name} must be a scalar or 1-D tensor, got shape {tuple(zero_point.shape)}")
        if zero_point.numel() and not bool(((zero_point >= qmin) & (zero_point <= qmax)).all()):
            raise ValueError(f"{name} must lie in [{qmin}, {qmax}], got {zero_point.tolist()}")
        return zero_point
    if isinstance(zero_point, bool) or not isinstance(zero_point, int):
        raise TypeError(f"{name} must be an int, got {type(zero_point).__name__}")
    if not qmin <= zero_point <= qmax:
        raise ValueError(f"{name} must lie in [{qmin}, {qmax}], got {zero_point}")
    return zero_point


def check_bits(name: str, bits, lo: int = 2, hi: int = 16) -> int:
    return check_int(name, bits, lo, hi)


def check_axis(name: str, axis, ndim: int) -> int:
    check_int(name, axis)
    if ndim == 0 or not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-D tensor, got {axis}")
    return axis % ndim


def check_choice(name: str, value, allowed: Iterable):
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
