"""An integer reference of a quantized convolution: accumulate, then requantize.
Taught in ``notebooks/09-fake-vs-real-mismatch.ipynb``.

A quantized conv (or linear) layer does two things::

    (1)  acc[o] = sum_k (x_q[k] - x_zp) * (w_q[o, k] - w_zp[o])              exact, int32
    (2)  y_q[o] = clamp(round(acc[o] * M[o] + bias[o] / (x_s * w_s[o]) * M[o]) + y_zp, lo, 255)
         with M[o] = x_s * w_s[o] / y_s  (the requantization multiplier)

Step (1) is exact integer arithmetic. Step (2) is where implementations differ;
``requant`` picks one:

* ``"fbgemm"`` -- PyTorch's fbgemm kernel (engines ``fbgemm`` and, for most
  layers, ``x86``): in float32, ``t = float(acc) + bias / (x_s * w_s)`` then
  ``round_half_even(t * M)``, with ``x_s * w_s`` and ``M`` rounded to float32.
  Bit-exact with ``torch.ao.nn.quantized.Conv2d`` on the fbgemm engine
  (``tests/test_intref.py`` proves it with hypothesis).
* ``"float64"`` -- the same formula in float64: the "exact" rounding.
* ``"int32_bias"`` -- the bias is first rounded to int32 with scale
  ``x_s * w_s`` (as QNNPACK does), then ``round_half_even(float32(acc + bias_q) * M)``.
* ``"int32_bias_trunc"`` -- the same with the bias truncated toward zero, as
  PyTorch's ONNX (TorchScript) exporter writes it for ``QLinearConv``/``QGemm``.
* ``"fixed_point"`` -- ``M`` becomes a 31-bit integer multiplier and a shift (:func:`qlab.requant.quantize_multiplier`);
  ``(acc * m + 2**(s-1)) >> s`` rounds once, half up.
* ``"fixed_point_double"`` -- the gemmlowp/TFLite style: a rounding
  high-multiply, then a rounding right shift (two roundings, half away from zero).

``lo`` is ``y_zp`` for a fused ReLU (the real zero), else 0.

``int16_pairs=True`` emulates the AVX2 ``vpmaddubsw`` instruction for 1x1
convolutions: raw codes are multiplied in pairs of neighbouring input channels
and each pair sum saturates to int16 before it is added to the int32 accumulator
(AVX-512 VNNI's ``vpdpbusd`` has no such step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_tensor
from .requant import multiply_by_quantized_multiplier, quantize_multiplier

__all__ = ["REQUANT_MODES", "conv2d_acc", "requantize", "conv2d_int"]

REQUANT_MODES = ("fbgemm", "float64", "int32_bias", "int32_bias_trunc", "fixed_point", "fixed_point_double")


def _check_codes(name, q, dtypes):
    check_tensor(name, q)
    if q.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(str(d) for d in dtypes)} (integer codes), got {q.dtype}")
    return q


def conv2d_acc(
    x_q: torch.Tensor,
    x_zp: int,
    w_q: torch.Tensor,
    w_zp=0,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    int16_pairs: bool = False,
) -> torch.Tensor:
    """Equation (1): the exact int32 accumulators of a conv, as an int64 tensor ``[N, C_out, H, W]``.

    ``x_q``: uint8 codes ``[N, C_in, H, W]``; ``w_q``: int8 codes ``[C_out, C_in/groups, kh, kw]``;
    ``w_zp``: an int or a per-output-channel tensor. Computed in float64, which is
    exact for these integer ranges. ``int16_pairs`` emulates AVX2 ``vpmaddubsw``
    (1x1 convolutions with an even number of input channels and ``groups=1`` only).
    """
    _check_codes("x_q", x_q, (torch.uint8,))
    _check_codes("w_q", w_q, (torch.int8,))
    if x_q.dim() != 4 or w_q.dim() != 4:
        raise ValueError(f"x_q and w_q must be 4-D, got {x_q.dim()}-D and {w_q.dim()}-D")
    wz = torch.as_tensor(w_zp, dtype=torch.float64).reshape(-1, 1, 1, 1)
    if not int16_pairs:
        acc = F.conv2d(
            x_q.to(torch.float64) - float(x_zp),
            w_q.to(torch.float64) - wz,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
        )
        return acc.to(torch.int64)
    if w_q.shape[2:] != (1, 1) or groups != 1 or w_q.shape[1] % 2 or padding not in (0, (0, 0)):
        raise ValueError("int16_pairs emulates vpmaddubsw for 1x1 convs with an even C_in, groups=1, padding=0 only")
    if bool((torch.as_tensor(w_zp) != 0).any()):
        raise ValueError("int16_pairs needs symmetric weights (w_zp == 0), as fbgemm's x86 qconfig uses")
    xs = x_q[:, :, :: _pair(stride)[0], :: _pair(stride)[1]].to(torch.int32)  # [N, C, H, W]
    w = w_q[:, :, 0, 0].to(torch.int32)  # [O, C]
    prod = xs.unsqueeze(1) * w.reshape(1, w.shape[0], w.shape[1], 1, 1)  # raw u8 * s8, [N, O, C, H, W]
    pairs = (prod[:, :, 0::2] + prod[:, :, 1::2]).clamp(-32768, 32767)  # vpmaddubsw: int16 saturation
    raw = pairs.to(torch.int64).sum(2)
    # the input zero point is removed afterwards, exactly: x_zp * sum_k w[o, k]
    return raw - int(x_zp) * w.to(torch.int64).sum(1).reshape(1, -1, 1, 1)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def requantize(
    acc: torch.Tensor,
    x_scale: float,
    w_scale,
    y_scale: float,
    y_zp: int,
    bias: torch.Tensor | None = None,
    *,
    requant: str = "fbgemm",
    relu: bool = False,
    qmin: int = 0,
    qmax: int = 255,
) -> torch.Tensor:
    """Equation (2): int accumulators ``[N, C, ...]`` -> output codes (int64), by one of :data:`REQUANT_MODES`.

    ``w_scale``: a float or a per-output-channel tensor; ``bias``: float32 ``[C]`` or None.
    """
    check_tensor("acc", acc)
    check_choice("requant", requant, REQUANT_MODES)
    shape = [1, -1] + [1] * (acc.dim() - 2)
    f32 = torch.float32
    xs = torch.tensor(float(x_scale), dtype=f32)
    ws = torch.as_tensor(w_scale, dtype=f32).reshape(shape)
    ys = torch.tensor(float(y_scale), dtype=f32)
    b = None if bias is None else bias.detach().to(f32).reshape(shape)
    if requant == "float64":
        t = acc.to(torch.float64) * (xs.double() * ws.double())
        if b is not None:
            t = t + b.double()
        r = torch.round(t / ys.double()).to(torch.int64)
    elif requant in ("fbgemm", "int32_bias", "int32_bias_trunc"):
        act_times_w = xs * ws  # float32
        mult = act_times_w / ys  # float32
        if requant == "fbgemm":
            t = acc.to(f32)
            if b is not None:
                t = t + b / act_times_w
        else:
            to_int = torch.round if requant == "int32_bias" else torch.trunc
            bq = (
                torch.zeros_like(act_times_w, dtype=torch.int64)
                if b is None
                else to_int(b / act_times_w).to(torch.int64)
            )
            t = (acc + bq).to(f32)
        r = torch.round(t * mult).to(torch.int64)
    else:  # fixed point: integer multiplier and shift per channel
        mult = (xs * ws / ys).reshape(-1).tolist()
        act_times_w = (xs * ws).reshape(-1)
        bq = (
            torch.zeros(len(mult), dtype=torch.int64)
            if b is None
            else torch.round(b.reshape(-1) / act_times_w).to(torch.int64)
        )
        bq = bq.expand(len(mult)) if bq.numel() == 1 else bq
        outs = []
        n_ch = acc.shape[1]
        for c in range(n_ch):
            qmul, shift = quantize_multiplier(float(mult[c if len(mult) > 1 else 0]))  # M = qmul * 2**(shift - 31)
            a = acc[:, c] + bq[c if bq.numel() > 1 else 0]
            if requant == "fixed_point":  # one rounding, half up
                right = 31 - shift
                r_c = (a * qmul + (1 << (right - 1))) >> right
            else:  # gemmlowp: rounding doubling high-mul (2**31), then a rounding shift
                r_c = multiply_by_quantized_multiplier(a, torch.tensor(qmul), torch.tensor(shift))
            outs.append(r_c)
        r = torch.stack(outs, 1)
    lo = max(qmin, int(y_zp)) if relu else qmin
    return (r + int(y_zp)).clamp(lo, qmax)


def conv2d_int(
    x_q: torch.Tensor,
    x_scale: float,
    x_zp: int,
    w_q: torch.Tensor,
    w_scale,
    y_scale: float,
    y_zp: int,
    bias: torch.Tensor | None = None,
    *,
    w_zp=0,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    relu: bool = False,
    requant: str = "fbgemm",
    int16_pairs: bool = False,
) -> torch.Tensor:
    """A whole quantized conv: :func:`conv2d_acc` then :func:`requantize`; returns uint8 codes.

    With the defaults this equals ``torch.ao.nn.quantized.Conv2d`` (``ConvReLU2d`` with
    ``relu=True``) on the fbgemm engine bit for bit.
    """
    acc = conv2d_acc(
        x_q, x_zp, w_q, w_zp, stride=stride, padding=padding, dilation=dilation, groups=groups, int16_pairs=int16_pairs
    )
    return requantize(acc, x_scale, w_scale, y_scale, y_zp, bias, requant=requant, relu=relu).to(torch.uint8)
