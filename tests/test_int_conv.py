"""qlab.int_conv against PyTorch's quantized conv (fbgemm, qnnpack) and its own arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
from fbgemm_units import SATURATES
from hypothesis import given, settings
from hypothesis import strategies as st

import qlab
from qlab.int_conv import REQUANT_MODES, conv2d_acc, conv2d_int, requantize


def _torch_conv(engine, xc, xs, xz, wc, ws, b, ys, yz, relu, stride, padding):
    with qlab.scoped(engine=engine):
        return _torch_conv_on_engine(xc, xs, xz, wc, ws, b, ys, yz, relu, stride, padding)


def _torch_conv_on_engine(xc, xs, xz, wc, ws, b, ys, yz, relu, stride, padding):
    xq = torch._make_per_tensor_quantized_tensor(xc, xs, xz)
    if isinstance(ws, torch.Tensor):
        wq = torch._make_per_channel_quantized_tensor(wc, ws.double(), torch.zeros(len(ws), dtype=torch.long), 0)
    else:
        wq = torch._make_per_tensor_quantized_tensor(wc, ws, 0)
    conv = (nniq.ConvReLU2d if relu else nnq.Conv2d)(
        wc.shape[1], wc.shape[0], wc.shape[2:], stride=stride, padding=padding
    )
    conv.set_weight_bias(wq, b)
    conv.scale, conv.zero_point = ys, yz
    return conv(xq).int_repr()


layer = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**16),
        "cin": st.integers(1, 6),
        "cout": st.integers(1, 6),
        "k": st.sampled_from([1, 3]),
        "per_channel": st.booleans(),
        "bias": st.booleans(),
        "relu": st.booleans(),
        "stride": st.sampled_from([1, 2]),
        "xz": st.integers(0, 255),
        "yz": st.integers(0, 255),
        "ys": st.floats(0.002, 0.2),
    }
)


def _make(p):
    g = torch.Generator().manual_seed(p["seed"])
    xc = torch.randint(0, 256, (2, p["cin"], 7, 7), generator=g, dtype=torch.int32).to(torch.uint8)
    wc = torch.randint(-128, 128, (p["cout"], p["cin"], p["k"], p["k"]), generator=g, dtype=torch.int32).to(torch.int8)
    ws = (torch.rand(p["cout"], generator=g) * 0.01 + 1e-3) if p["per_channel"] else 0.004
    if isinstance(ws, torch.Tensor):
        ws = ws.double().float()
    b = (torch.rand(p["cout"], generator=g) - 0.5) if p["bias"] else None
    return xc, 0.02, p["xz"], wc, ws, b, p["ys"], p["yz"], p["relu"], p["stride"], p["k"] // 2


@settings(max_examples=60, deadline=None)
@given(layer)
def test_conv2d_int_is_bit_exact_with_fbgemm(p):
    xc, xs, xz, wc, ws, b, ys, yz, relu, stride, pad = _make(p)
    if SATURATES:  # no VNNI: FBGEMM's vpmaddubsw is exact only on 7-bit codes (reduce_range); see the next test
        xc, xz = xc // 2, xz // 2
    real = _torch_conv("fbgemm", xc, xs, xz, wc, ws, b, ys, yz, relu, stride, pad)
    ref = conv2d_int(xc, xs, xz, wc, ws, ys, yz, b, stride=stride, padding=pad, relu=relu)
    assert torch.equal(real, ref)


@pytest.mark.skipif(not SATURATES, reason="FBGEMM has AVX-512 VNNI here: vpdpbusd never saturates")
def test_fbgemm_without_vnni_equals_the_int16_pairs_emulation():
    """On this CPU FBGEMM runs vpmaddubsw: 1x1 convs with 8-bit codes equal conv2d_acc(int16_pairs=True), bit for bit,
    and differ from the exact accumulator where a pair saturates."""
    saturated = 0
    for seed in range(40):
        p = {"seed": seed, "cin": 2 + 2 * (seed % 4), "cout": 3, "k": 1, "per_channel": bool(seed % 2),
             "bias": bool(seed % 3), "relu": False, "stride": 1, "xz": seed * 7 % 256, "yz": 3, "ys": 0.05}
        xc, xs, xz, wc, ws, b, ys, yz, relu, stride, pad = _make(p)
        real = _torch_conv("fbgemm", xc, xs, xz, wc, ws, b, ys, yz, relu, stride, pad)
        acc = conv2d_acc(xc, xz, wc, int16_pairs=True)
        assert torch.equal(real, requantize(acc, xs, ws, ys, yz, b).to(torch.uint8)), seed
        saturated += not torch.equal(real, conv2d_int(xc, xs, xz, wc, ws, ys, yz, b))
    assert saturated > 0


@pytest.mark.skipif("qnnpack" not in torch.backends.quantized.supported_engines, reason="no qnnpack engine")
@settings(max_examples=30, deadline=None)
@given(layer)
def test_int32_bias_mode_is_bit_exact_with_qnnpack(p):
    p = dict(p, per_channel=False)
    xc, xs, xz, wc, ws, b, ys, yz, relu, stride, pad = _make(p)
    real = _torch_conv("qnnpack", xc, xs, xz, wc, ws, b, ys, yz, relu, stride, pad)
    ref = conv2d_int(xc, xs, xz, wc, ws, ys, yz, b, stride=stride, padding=pad, relu=relu, requant="int32_bias")
    assert torch.equal(real, ref)


def test_requant_modes_agree_away_from_ties():
    acc = torch.arange(-1000, 1000).reshape(1, 1, -1)
    outs = {m: requantize(acc, 0.02, 0.003, 0.0371, 128, requant=m) for m in REQUANT_MODES}
    exact = torch.round(acc.double() * 0.02 * 0.003 / 0.0371).long().add(128).clamp(0, 255)
    for m, o in outs.items():
        assert (o - exact).abs().max() <= 1, m


def test_int16_pairs_saturate_only_large_pairs():
    xc = torch.full((1, 4, 2, 2), 255, dtype=torch.uint8)
    wc = torch.full((1, 4, 1, 1), 127, dtype=torch.int8)
    assert int(conv2d_acc(xc, 0, wc).flatten()[0]) == 4 * 255 * 127
    assert int(conv2d_acc(xc, 0, wc, int16_pairs=True).flatten()[0]) == 2 * 32767
    small = torch.full((1, 4, 2, 2), 127, dtype=torch.uint8)  # reduce_range: 7-bit activations never saturate
    assert torch.equal(conv2d_acc(small, 0, wc), conv2d_acc(small, 0, wc, int16_pairs=True))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: conv2d_acc(torch.zeros(1, 2, 2, 2), 0, torch.zeros(1, 2, 1, 1, dtype=torch.int8)),
            TypeError,
            "x_q must have dtype",
        ),
        (
            lambda: requantize(torch.zeros(1, 1), 1.0, 1.0, 1.0, 0, requant="magic"),
            ValueError,
            "requant must be one of",
        ),
        (
            lambda: conv2d_acc(
                torch.zeros(1, 3, 2, 2, dtype=torch.uint8),
                0,
                torch.zeros(1, 3, 1, 1, dtype=torch.int8),
                int16_pairs=True,
            ),
            ValueError,
            "even C_in",
        ),
    ],
)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
