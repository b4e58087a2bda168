"""Every source of fake-vs-real difference besides the seed's, isolated and measured in LSBs.
Taught in ``notebooks/09-fake-vs-real-mismatch.ipynb`` (section 5); the seed itself is :mod:`qlab.mismatch`.

Each ``exp_*`` function builds a small layer, runs it through the fake-quant float path and
PyTorch's real int8 kernel (or :mod:`qlab.int_conv`'s integer reference with one arithmetic
changed) and counts the output codes that differ: requantization rounding, int32 bias
quantization, ``reduce_range``, int16 saturation of ``vpmaddubsw``, average pooling and
BatchNorm folding. :func:`simulate` puts all of them behind switches; :func:`draw_mismatch` is
the notebook's interactive figure.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import torch
import torch.ao.quantization as tq
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from . import int_conv
from ._checks import check_choice, check_number
from ._env import scoped
from .mismatch import SourceResult, fused_kernel_qparams, lsb_stats, output_codes
from .primitives import choose_qparams, fake_quantize, quantize

__all__ = [
    "exp_fused_qparams",
    "exp_requant_rounding",
    "exp_int32_bias",
    "exp_reduce_range",
    "exp_saturation",
    "exp_saturation_real_kernel",
    "exp_avgpool",
    "exp_bn_folding",
    "SOURCES",
    "simulate",
    "draw_mismatch",
]


def _qconv(x_codes, x_s, x_z, w_codes, w_s, b, y_s, y_z, relu=False, padding=0, engine="fbgemm"):
    """Run PyTorch's real quantized conv on integer codes (a 1-layer 'converted model')."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    with scoped(engine=engine):
        xq = torch._make_per_tensor_quantized_tensor(x_codes, float(x_s), int(x_z))
        if isinstance(w_s, torch.Tensor) and w_s.numel() > 1:
            wq = torch._make_per_channel_quantized_tensor(
                w_codes, w_s.double(), torch.zeros(w_s.numel(), dtype=torch.long), 0
            )
        else:
            wq = torch._make_per_tensor_quantized_tensor(w_codes, float(w_s), 0)
        o, c, kh, kw = w_codes.shape
        conv = (nniq.ConvReLU2d if relu else nnq.Conv2d)(c, o, (kh, kw), padding=padding)
        conv.set_weight_bias(wq, b)
        conv.scale, conv.zero_point = float(y_s), int(y_z)
        return conv(xq).int_repr()


def _random_layer(seed: int, cin: int = 32, cout: int = 64, size: int = 32, bias: bool = True):
    """A 3x3 conv layer's integer codes and scales. Activation codes are 7-bit (0..127, fbgemm's default range):
    then AVX2's ``vpmaddubsw`` cannot saturate, and the layer isolates one source on every CPU
    (:func:`exp_saturation` measures saturation on its own)."""
    g = torch.Generator().manual_seed(seed)
    x_codes = torch.randint(0, 128, (1, cin, size, size), generator=g, dtype=torch.int32).to(torch.uint8)
    w_codes = torch.randint(-127, 128, (cout, cin, 3, 3), generator=g, dtype=torch.int32).to(torch.int8)
    b = (torch.rand(cout, generator=g) - 0.5) * 0.4 if bias else None
    x_s, x_z, w_s = 0.02, 17, 0.004
    acc = int_conv.conv2d_acc(x_codes, x_z, w_codes, padding=1)
    y_real = acc.double() * (x_s * w_s)
    y_s = float((y_real.max() - y_real.min()) / 255) * 0.6  # a calibrated-ish output scale
    y_z = 128
    return x_codes, x_s, x_z, w_codes, w_s, b, y_s, y_z


def _fake_conv(x_codes, x_s, x_z, w_codes, w_s, b, y_s, y_z, padding=1, relu=False):
    """The fake-quant model's float path on the same integer codes: dequantize, float conv, fake-quantize."""
    x = (x_codes.to(torch.float32) - x_z) * torch.tensor(x_s, dtype=torch.float32)
    w = w_codes.to(torch.float32) * torch.as_tensor(w_s, dtype=torch.float32).reshape(-1, 1, 1, 1)
    y = F.conv2d(x, w, b, padding=padding)
    if relu:
        y = F.relu(y)
    yq = torch.fake_quantize_per_tensor_affine(y, float(y_s), int(y_z), 0, 255)
    return output_codes(yq, y_s, y_z)


def exp_fused_qparams(seed: int = 0, engine: str = "x86") -> SourceResult:
    """PyTorch's default QAT qconfig (fused fake quants, per-channel symmetric weights):
    after one training step, how many integer weights and output codes differ between
    the fake-quant model and its converted model."""
    with scoped(engine=engine, seed=seed):
        m = nn.Sequential(tq.QuantStub(), nn.Conv2d(8, 8, 3, padding=1), tq.DeQuantStub())
        m.qconfig = tq.get_default_qat_qconfig(engine)
        mp = tq.prepare_qat(m.train())
        x = torch.randn(2, 8, 12, 12)
        mp(x)
        mp.apply(tq.disable_observer).eval()
        fq = mp[1].weight_fake_quant
        kernel_scale = fq.scale.clone()
        obs_scale, _ = fq.calculate_qparams()
        with torch.no_grad():
            w_fake = fq(mp[1].weight)
            y_fake = mp(x)
        mq = tq.convert(copy.deepcopy(mp))
        with torch.no_grad():
            y_real = mq(x)
        wq = mq[1].weight()
        w_fake_codes = torch.round(w_fake / kernel_scale.reshape(-1, 1, 1, 1)).to(torch.int64)
        n_w_diff = int((w_fake_codes != wq.int_repr().to(torch.int64)).sum())
        ratio = (kernel_scale / obs_scale).tolist()
        return lsb_stats(
            "fused fake-quant qparams",
            y_fake,
            y_real,
            float(mq[1].scale),
            weights_differ=n_w_diff,
            weights=int(wq.numel()),
            scale_ratio_min=min(ratio),
            scale_ratio_max=max(ratio),
        )


def exp_requant_rounding(seed: int = 0, ties: bool = False) -> dict[str, SourceResult]:
    """Same integer inputs and weights, no bias: PyTorch's fbgemm conv vs the fake-quant float
    path and vs other requantization arithmetics (float64, fixed point, double rounding).

    ``ties=True`` picks the output scale ``2 * x_s * w_s``, so the multiplier is exactly 1/2 and every
    odd accumulator is a tie: the tie rules (half to even, half up, half away from zero) and the
    fake path's float noise then decide half of the outputs.
    """
    xc, xs, xz, wc, ws, _, ys, yz = _random_layer(seed, bias=False, cin=8 if ties else 32)
    if ties:  # small codes keep acc / 2 inside the output range
        xc, xz, wc = (xc // 8).to(torch.uint8), 16, (wc.to(torch.int32) // 32).to(torch.int8)
        ys = float(torch.tensor(xs, dtype=torch.float32) * torch.tensor(ws, dtype=torch.float32)) * 2
    real = _qconv(xc, xs, xz, wc, ws, None, ys, yz, padding=1)
    out = {"fake": lsb_stats("fake-quant float path", _fake_conv(xc, xs, xz, wc, ws, None, ys, yz), real)}
    acc = int_conv.conv2d_acc(xc, xz, wc, padding=1)
    for mode in ("fbgemm", "float64", "fixed_point", "fixed_point_double"):
        ref = int_conv.requantize(acc, xs, ws, ys, yz, None, requant=mode)
        out[mode] = lsb_stats(f"requant {mode}", ref, real)
    return out


def exp_int32_bias(seed: int = 0) -> dict[str, SourceResult]:
    """A bias: fbgemm adds it in float (``bias / (x_s * w_s)``), QNNPACK and ONNX ``QLinearConv``
    first round it to int32. Also compares PyTorch's qnnpack engine with the int32 reference."""
    xc, xs, xz, wc, ws, b, ys, yz = _random_layer(seed, bias=True)
    real_fbgemm = _qconv(xc, xs, xz, wc, ws, b, ys, yz, padding=1, engine="fbgemm")
    acc = int_conv.conv2d_acc(xc, xz, wc, padding=1)
    ref_int32 = int_conv.requantize(acc, xs, ws, ys, yz, b, requant="int32_bias")
    out = {
        "int32 bias vs fbgemm": lsb_stats("int32 bias vs float bias", ref_int32, real_fbgemm),
        "fake vs fbgemm": lsb_stats(
            "fake vs fbgemm (float bias)", _fake_conv(xc, xs, xz, wc, ws, b, ys, yz), real_fbgemm
        ),
    }
    if "qnnpack" in torch.backends.quantized.supported_engines:
        real_qnnpack = _qconv(xc, xs, xz, wc, ws, b, ys, yz, padding=1, engine="qnnpack")
        out["qnnpack vs int32 ref"] = lsb_stats("qnnpack vs int32 reference", real_qnnpack, ref_int32)
    return out


def exp_reduce_range(seed: int = 0, input_max: float = 2.0) -> SourceResult:
    """7-bit activations (``quant_max=127``, what ``reduce_range`` gives): calibrate on [0, 1], run on
    [0, input_max]. The fake quants clamp codes at 127; the converted model's quantize and conv clamp at 255."""
    with scoped(engine="fbgemm", seed=seed):
        act = tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=127, dtype=torch.quint8
        )
        wt = tq.FakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_tensor_symmetric,
        )
        m = nn.Sequential(tq.QuantStub(), nn.Conv2d(4, 4, 1), tq.DeQuantStub())
        m.qconfig = tq.QConfig(activation=act, weight=wt)
        mp = tq.prepare_qat(m.train())
        for _ in range(10):
            mp(torch.rand(1, 4, 8, 8))
        mp.apply(tq.disable_observer).eval()
        mq = tq.convert(copy.deepcopy(mp))
        x = torch.rand(1, 4, 8, 8) * float(input_max)
        with torch.no_grad():
            y_fake, y_real = mp(x), mq(x)
        return lsb_stats("reduce_range (7-bit) clamp", y_fake, y_real, float(mq[1].scale), input_max=float(input_max))


def exp_saturation(seed: int = 0, act_max: int = 255) -> SourceResult:
    """A 1x1 conv whose uint8 activations go up to ``act_max``: the exact int32 accumulator
    (VNNI ``vpdpbusd``) vs AVX2 ``vpmaddubsw``'s int16-saturated pair sums."""
    g = torch.Generator().manual_seed(seed)
    cin, cout = 16, 8
    xc = torch.randint(0, act_max + 1, (1, cin, 16, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    wc = torch.randint(-128, 128, (cout, cin, 1, 1), generator=g, dtype=torch.int32).to(torch.int8)
    xs, xz, ws = 0.02, 0, 0.01
    acc = int_conv.conv2d_acc(xc, xz, wc)
    ys = float(acc.abs().max()) * xs * ws / 127
    exact = int_conv.conv2d_int(xc, xs, xz, wc, ws, ys, 128)
    sat = int_conv.conv2d_int(xc, xs, xz, wc, ws, ys, 128, int16_pairs=True)
    pairs = xc[0].to(torch.int32).reshape(cin // 2, 2, -1)  # how many pair sums overflow int16
    prod = pairs.unsqueeze(0) * wc[:, :, 0, 0].to(torch.int32).reshape(cout, cin // 2, 2, 1)
    s = prod.sum(2)
    n_sat = int(((s > 32767) | (s < -32768)).sum())
    return lsb_stats("int16 saturation", sat, exact, act_max=act_max, saturated_pairs=n_sat, pairs=int(s.numel()))


def exp_saturation_real_kernel(seed: int = 0, isa: str = "AVX2") -> dict:
    """Run PyTorch's fbgemm conv in a subprocess with ``FBGEMM_ENABLE_INSTRUCTIONS=isa`` (AVX2 has no
    VNNI) and compare it with the exact and the saturating references of :func:`exp_saturation`'s layer."""
    code = (
        "import torch, warnings; warnings.filterwarnings('ignore');"
        "from qlab.mismatch_sources import _saturation_layer_codes as f; r = f(%d);"
        "print(r['real_eq_exact'], r['real_eq_sat'], r['max_lsb_real_vs_exact'])" % seed
    )
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS=isa)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"subprocess failed: {res.stderr[-500:]}")
    eq_exact, eq_sat, max_lsb = res.stdout.split()[-3:]
    return {
        "isa": isa,
        "real_eq_exact": eq_exact == "True",
        "real_eq_saturating_ref": eq_sat == "True",
        "max_lsb_vs_exact": int(max_lsb),
    }


def _saturation_layer_codes(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cin, cout = 16, 8
    xc = torch.randint(0, 256, (1, cin, 16, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    wc = torch.randint(-128, 128, (cout, cin, 1, 1), generator=g, dtype=torch.int32).to(torch.int8)
    xs, xz, ws = 0.02, 0, 0.01
    acc = int_conv.conv2d_acc(xc, xz, wc)
    ys = float(acc.abs().max()) * xs * ws / 127
    exact = int_conv.conv2d_int(xc, xs, xz, wc, ws, ys, 128)
    sat = int_conv.conv2d_int(xc, xs, xz, wc, ws, ys, 128, int16_pairs=True)
    real = _qconv(xc, xs, xz, wc, ws, None, ys, 128, engine="fbgemm")
    return {
        "real_eq_exact": bool(torch.equal(real, exact)),
        "real_eq_sat": bool(torch.equal(real, sat)),
        "max_lsb_real_vs_exact": int((real.int() - exact.int()).abs().max()),
    }


def exp_avgpool(seed: int = 0, zero_point: int = 3) -> dict[str, SourceResult]:
    """2x2 average pooling of quantized codes. Eager-mode QAT puts no fake quant after the pool
    (its output is the exact mean, off the integer grid); FX puts one (round half to even of the
    mean); the real kernel rounds the mean of ``q - zero_point``, with a tie rule that depends on
    the memory layout."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (1, 8, 16, 16), generator=g, dtype=torch.int32).to(torch.uint8)
    s = 0.05
    xq = torch._make_per_tensor_quantized_tensor(codes, s, int(zero_point))
    real_nchw = F.avg_pool2d(xq, 2).int_repr()
    real_nhwc = F.avg_pool2d(xq.contiguous(memory_format=torch.channels_last), 2).int_repr()
    mean = F.avg_pool2d(xq.dequantize(), 2)
    eager_codes = mean / s + zero_point  # fractional codes
    fx_codes = output_codes(torch.fake_quantize_per_tensor_affine(mean, s, int(zero_point), 0, 255), s, zero_point)
    return {
        "eager (no requant)": lsb_stats("avgpool eager vs real", eager_codes, real_nchw),
        "fx vs real nchw": lsb_stats("avgpool fx vs real NCHW", fx_codes, real_nchw),
        "fx vs real nhwc": lsb_stats("avgpool fx vs real NHWC", fx_codes, real_nhwc),
        "real nchw vs nhwc": lsb_stats("avgpool NCHW vs NHWC", real_nchw, real_nhwc),
    }


def exp_bn_folding(seed: int = 0) -> dict[str, SourceResult]:
    """A QAT ``ConvBnReLU2d`` vs its converted conv.

    Eval mode (BN statistics frozen): the fake path scales the weights by ``gamma / sqrt(var + eps)``,
    fake-quantizes, convolves, divides back and applies BN; ``convert`` folds with
    ``gamma * rsqrt(var + eps)`` and quantizes the folded weights: the same math, rounded differently.
    Train mode (what a QAT loss sees while BN is not frozen): BN normalizes with the batch's statistics,
    the converted model with the running ones.
    """
    import torch.ao.nn.intrinsic.qat as nniqat

    with scoped(engine="fbgemm", seed=seed):
        m = nn.Sequential(
            tq.QuantStub(), nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), tq.DeQuantStub()
        )
        with torch.no_grad():
            bn = m[2]
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
        m.eval()
        tq.fuse_modules_qat(m, [["1", "2", "3"]], inplace=True)
        act = tq.FakeQuantize.with_args(  # 7-bit activations: no vpmaddubsw saturation on AVX2
            observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=127, dtype=torch.quint8
        )
        wt = tq.FakeQuantize.with_args(
            observer=tq.MovingAveragePerChannelMinMaxObserver,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
        )
        m.qconfig = tq.QConfig(activation=act, weight=wt)
        mp = tq.prepare_qat(m.train())
        x = torch.randn(4, 16, 24, 24)
        frozen = copy.deepcopy(mp)
        frozen.apply(nniqat.freeze_bn_stats)
        for _ in range(3):
            frozen(x)
        frozen.apply(tq.disable_observer).eval()
        training = copy.deepcopy(frozen)
        training.apply(nniqat.update_bn_stats).train()  # BN uses batch statistics again
        with torch.no_grad():
            y_fake = frozen(x)
            y_train = training(x)
            conv = frozen[1]
            sf = conv.bn.weight / torch.sqrt(conv.bn.running_var + conv.bn.eps)
            w_fake = conv.weight_fake_quant(conv.weight * sf.reshape(-1, 1, 1, 1))
        mq = tq.convert(copy.deepcopy(frozen))
        with torch.no_grad():
            y_real = mq(x)
        wq = mq[1].weight()
        s_fake = conv.weight_fake_quant.scale.reshape(-1, 1, 1, 1)
        w_fake_codes = torch.round(w_fake / s_fake).to(torch.int64)
        n_w_diff = int((w_fake_codes != wq.int_repr().to(torch.int64)).sum())
        n_s_diff = int((conv.weight_fake_quant.scale.double() != wq.q_per_channel_scales()).sum())
        y_s = float(mq[1].scale)
        return {
            "eval": lsb_stats(
                "BN folded, eval mode",
                y_fake,
                y_real,
                y_s,
                weights_differ=n_w_diff,
                weights=int(wq.numel()),
                scales_differ=n_s_diff,
            ),
            "train": lsb_stats("BN batch stats, train mode", y_train, y_real, y_s),
        }


# ------------------------------------------------------------ the simulator

SOURCES = ("fused_qparams", "fixed_point", "int32_bias", "reduce_range", "saturation", "avgpool", "bn_folding")


def _sim_layer(k: float):
    g = torch.Generator().manual_seed(0)
    c = 4
    w = float(k) * (torch.eye(c) + 0.6 * (torch.rand(c, c, generator=g) * 2 - 1)).reshape(c, c, 1, 1)
    b = float(k) * 0.2 * (torch.rand(c, generator=g) - 0.5)
    gamma = 0.5 + torch.rand(c, generator=g)
    beta = 0.2 * (torch.rand(c, generator=g) - 0.5)
    mean = 0.2 * (torch.rand(c, generator=g) - 0.5)
    var = 0.3 + torch.rand(c, generator=g)
    return w, b, (gamma, beta, mean, var, 1e-5)


def _sim_input(input_max: float, c: int = 4) -> torch.Tensor:
    ramp = torch.arange(256, dtype=torch.float32) / 255.0
    rows = torch.stack([torch.roll(ramp, 64 * i) for i in range(c)])  # each channel a shifted ramp
    return (rows.reshape(1, c, 16, 16) * float(input_max)).contiguous()


def simulate(k: float = 1.0, input_max: float = 1.0, **sources: bool) -> dict:
    """A 4-channel 1x1 Conv-(BN)-ReLU layer, fake path vs integer reference, with each source switchable.

    The input is calibrated on [0, 1] and run on [0, input_max] (a ramp per channel);
    weights are ``k * (I + 0.6 R)``. Switches (:data:`SOURCES`, all off by default):
    ``fused_qparams`` (fake weights use the fused kernel's formula), ``fixed_point`` (real
    requantization in fixed point with double rounding, int32 bias), ``int32_bias``,
    ``reduce_range`` (7-bit activations in the fake model), ``saturation`` (AVX2
    ``vpmaddubsw``), ``avgpool`` (a 2x2 average pool after the layer, eager semantics),
    ``bn_folding`` (the layer carries a BatchNorm, folded differently on each side).
    Returns fake and real codes (float; fake codes are fractional after an eager avgpool)
    and their LSB difference statistics.
    """
    for name in sources:
        check_choice("source", name, SOURCES)
    on = {s: bool(sources.get(s, False)) for s in SOURCES}
    check_number("k", k, 0, lo_open=True)
    check_number("input_max", input_max, 0, lo_open=True)
    w, b, (gamma, beta, mean, var, eps) = _sim_layer(k)
    if on["bn_folding"]:
        sf = gamma / torch.sqrt(var + eps)  # QAT's scale factor
        w_fake_float = w * sf.reshape(-1, 1, 1, 1)
        w_fold = w * (gamma * torch.rsqrt(var + eps)).reshape(-1, 1, 1, 1)  # convert's fold
        b_fold = (b - mean) * (gamma * torch.rsqrt(var + eps)) + beta
    else:
        w_fake_float = w_fold = w
        b_fold = b
    a_max = 127 if on["reduce_range"] else 255
    x_s, x_z = choose_qparams(torch.tensor(0.0), torch.tensor(1.0), quant_min=0, quant_max=a_max)
    x_s, x_z = float(x_s), int(x_z)
    # weights: the observer (convert) formula on the real side; the fused kernel's on the fake side if switched on
    w_min, w_max = float(w_fold.min()), float(w_fold.max())
    ws_real, _ = choose_qparams(torch.tensor(w_min), torch.tensor(w_max), dtype=torch.qint8, symmetric=True)
    ws_real = float(ws_real)
    if on["fused_qparams"]:
        ws_fake, wz_fake = fused_kernel_qparams(
            min(float(w_fake_float.min()), 0), float(w_fake_float.max()), -128, 127, True
        )
    else:
        ws_fake, wz_fake = ws_real, 0
    # output qparams: calibrated on the float layer over the [0, 1] input
    calib = F.relu(F.conv2d(_sim_input(1.0), w_fold, b_fold))
    y_s, y_z = choose_qparams(calib.min(), calib.max(), quant_min=0, quant_max=a_max)
    y_s, y_z = float(y_s), int(y_z)

    x = _sim_input(input_max)
    # fake path (what the QAT model computes)
    x_fq = fake_quantize(x, x_s, x_z, torch.quint8, quant_max=a_max)
    w_fq = fake_quantize(w_fake_float.contiguous(), ws_fake, wz_fake, torch.qint8)
    if on["bn_folding"]:
        y = F.conv2d(x_fq, w_fq) / sf.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
        y = (y - mean.reshape(1, -1, 1, 1)) / torch.sqrt(var + eps).reshape(1, -1, 1, 1) * gamma.reshape(
            1, -1, 1, 1
        ) + beta.reshape(1, -1, 1, 1)
    else:
        y = F.conv2d(x_fq, w_fq, b)
    y_fq = fake_quantize(F.relu(y), y_s, y_z, torch.quint8, quant_max=a_max)
    # real path (integer reference of the converted layer)
    x_q = quantize(x, x_s, x_z)  # the real quantize clamps to the dtype range [0, 255]
    w_q = quantize(w_fold.contiguous(), ws_real, 0, torch.qint8)
    acc = int_conv.conv2d_acc(x_q, x_z, w_q, int16_pairs=on["saturation"])
    mode = "fixed_point_double" if on["fixed_point"] else ("int32_bias" if on["int32_bias"] else "fbgemm")
    real = int_conv.requantize(acc, x_s, ws_real, y_s, y_z, b_fold, requant=mode, relu=True)
    fake = output_codes(y_fq, y_s, y_z).to(torch.float64)
    if on["avgpool"]:
        fake = F.avg_pool2d(fake, 2)  # eager: no fake quant after the pool, the mean stays off the grid
        rq = torch._make_per_tensor_quantized_tensor(real.to(torch.uint8), y_s, y_z)
        real = F.avg_pool2d(rq, 2).int_repr()
    stats = lsb_stats("simulation", fake, real)
    diff = (fake - real.double()).flatten()
    return {
        "fake": fake,
        "real": real.to(torch.float64),
        "diff": diff,
        "stats": stats,
        "qparams": {"x": (x_s, x_z), "w_fake": (ws_fake, wz_fake), "w_real": (ws_real, 0), "y": (y_s, y_z)},
        "sources": [s for s in SOURCES if on[s]],
    }


def draw_mismatch(fig: Figure, k: float = 1.0, input_max: float = 1.0, **sources: bool) -> dict:
    """The notebook's interactive figure. Left, top: fake and real codes of channel 0 along the input ramp
    (they overlap wherever they agree); left, bottom: their difference along the ramp in LSB, so a
    one-code difference is visible; right: the histogram of the differences over all outputs.
    Returns the :func:`simulate` stats and ``differ_at``, the ramp positions where channel 0 differs."""
    r = simulate(k, input_max, **sources)
    gs = fig.add_gridspec(2, 2, height_ratios=[2, 1], width_ratios=[3, 2])
    ax1 = fig.add_subplot(gs[0, 0])
    ax_d = fig.add_subplot(gs[1, 0], sharex=ax1)
    ax2 = fig.add_subplot(gs[:, 1])
    f0, r0 = r["fake"][0, 0].flatten().double(), r["real"][0, 0].flatten().double()
    ax1.plot(f0.numpy(), lw=1.6, color="C0", label="fake-quant")
    ax1.plot(r0.numpy(), lw=1.0, ls="--", color="C1", label="real int8")
    ax1.set_ylabel("output code")
    ax1.legend(loc="upper left", fontsize=7)
    ax1.tick_params(labelbottom=False)
    d0 = f0 - r0
    differ_at = torch.nonzero(d0 != 0).flatten()
    ax_d.axhline(0.0, color="0.6", lw=0.8)
    ax_d.plot(d0.numpy(), lw=0.8, color="C3")
    if len(differ_at):
        ax_d.plot(differ_at.numpy(), d0[differ_at].numpy(), "o", ms=2.5, color="C3")
    lim = max(1.0, float(d0.abs().max()))
    ax_d.set_ylim(-1.2 * lim, 1.2 * lim)
    ax_d.set_xlabel("position along the input ramp (channel 0)")
    ax_d.set_ylabel("fake - real", fontsize=8)
    d = r["diff"]
    lo, hi = float(d.min()), float(d.max())
    edges = torch.arange(min(lo, -1.0) - 0.25, max(hi, 1.0) + 0.5, 0.5)
    counts = torch.histc(d.float(), bins=len(edges) - 1, min=float(edges[0]), max=float(edges[-1]))
    ax2.bar(((edges[:-1] + edges[1:]) / 2).numpy(), counts.numpy(), width=0.45)
    ax2.set_yscale("symlog")
    ax2.set_xlabel("fake - real (LSB)")
    ax2.set_ylabel("outputs")
    st = r["stats"]
    on = ", ".join(r["sources"]) or "no source"
    ax2.set_title(f"{on}: {st.n_diff}/{st.n} differ, max {st.max_lsb:g} LSB", fontsize=8)
    return {"n": st.n, "n_diff": st.n_diff, "max_lsb": st.max_lsb, "mean_lsb": st.mean_lsb, "sources": r["sources"],
            "differ_at": differ_at.tolist()}
