"""qlab.diagnose: the seed, and multi-layer models (eager and FX) with a mismatch planted in a known layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.ao.quantization as tq
from fbgemm_units import SATURATES
from torch import nn
from torch.ao.quantization import QConfigMapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

import qlab
from qlab import mismatch as mm
from qlab.diagnose import CAUSES, diagnose


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.relu1(self.conv1(self.quant(x)))
        return self.dequant(self.conv3(self.relu2(self.conv2(x))))


def _qconfig(act_max=127 if SATURATES else 255):
    # 8-bit activations where FBGEMM has VNNI; without it 7 bits (reduce_range), as PyTorch's fbgemm qconfig uses:
    # vpmaddubsw would saturate (test_saturating_kernel_is_named)
    act = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=act_max, dtype=torch.quint8
    )
    wt = tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
    )
    return tq.QConfig(activation=act, weight=wt)


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def eager():
    return _eager(_qconfig())


def _eager(qconfig):
    with qlab.scoped(engine="fbgemm", seed=0):  # the models are built and converted under fbgemm, run under x86
        m = Net()
        tq.fuse_modules_qat(m, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)
        m.qconfig = qconfig
        mp = tq.prepare_qat(m.train())
        for _ in range(4):
            mp(X)
        mp.apply(tq.disable_observer).eval()
        return mp, tq.convert(copy.deepcopy(mp))


@pytest.fixture(scope="module")
def fx():
    with qlab.scoped(engine="fbgemm", seed=0):
        return _fx()


def _fx():
    mp = prepare_qat_fx(Net().train(), QConfigMapping().set_global(_qconfig()), (X,))
    for _ in range(4):
        mp(X)
    mp.apply(tq.disable_observer).eval()
    return mp, convert_fx(copy.deepcopy(mp))


def test_seed_model_points_at_the_fused_weight_qparams():
    r = mm.run_seed(1.0)
    d = diagnose(r.prepared, r.converted, mm.seed_input())
    first = d.first_divergence
    assert first.name == "conv" and first.cause == CAUSES["fused_qparams"]
    assert first.qparams_differ == ["weight"]
    assert first.weight_fake == ((pytest.approx(1 / 255),), (-128,)) and first.weight_real == (
        (pytest.approx(2 / 255),),
        (0,),
    )
    assert first.weight_values_differ == 3 and first.max_lsb == 1.0
    assert d["quant"].max_lsb == 0
    assert "first diverging layer: conv" in repr(d)
    assert list(d.to_dataframe().index) == ["quant", "conv"]


def test_seed_corrected_model_agrees():
    r = mm.run_seed(1.0, fake_quant="plain", weight_quant_min=-127, qparams="observers")
    d = diagnose(r.prepared, r.converted, mm.seed_input())
    assert d.first_divergence is None and all(lr.max_lsb == 0 for lr in d.layers)


@pytest.mark.parametrize("kind", ["eager", "fx"])
def test_clean_models_agree(kind, request):
    mp, mq = request.getfixturevalue(kind)
    d = diagnose(mp, mq, X)
    assert [lr.name for lr in d.layers if lr.name.startswith("conv")] == ["conv1", "conv2", "conv3"]
    assert d.first_divergence is None


@pytest.mark.skipif(not SATURATES, reason="FBGEMM has AVX-512 VNNI here: vpdpbusd never saturates")
def test_saturating_kernel_is_named():
    # this CPU's FBGEMM (no VNNI) on 8-bit activations: the first conv's int16 pair sums saturate
    mp, mq = _eager(_qconfig(act_max=255))
    d = diagnose(mp, mq, X)
    assert d.first_divergence.name == "conv1" and d["conv1"].cause == CAUSES["saturation"]
    assert d["conv1"].qparams_differ == [] and d["conv1"].weights_differ == 0


@pytest.mark.parametrize("kind", ["eager", "fx"])
def test_tampered_output_scale_is_found(kind, request):
    mp, mq = request.getfixturevalue(kind)
    bad = copy.deepcopy(mq)
    bad.conv2.scale = bad.conv2.scale * 1.1
    d = diagnose(mp, bad, X)
    assert d.first_divergence.name == "conv2"
    assert d["conv2"].cause == CAUSES["output_qparams"] and d["conv2"].qparams_differ == ["output"]
    assert d["conv1"].max_lsb == 0


@pytest.mark.parametrize("kind", ["eager", "fx"])
def test_tampered_integer_weight_is_found(kind, request):
    mp, mq = request.getfixturevalue(kind)
    bad = copy.deepcopy(mq)
    w, b = bad.conv2.weight(), bad.conv2.bias()
    codes = w.int_repr().clone()
    codes[3, 2, 1, 1] = max(-128, int(codes[3, 2, 1, 1]) - 9)
    bad.conv2.set_weight_bias(
        torch._make_per_channel_quantized_tensor(codes, w.q_per_channel_scales(), w.q_per_channel_zero_points(), 0), b
    )
    d = diagnose(mp, bad, X)
    assert d.first_divergence.name == "conv2" and d["conv2"].cause == CAUSES["weights"]
    assert d["conv2"].weights_differ == 1 and d["conv2"].first_weight_diff[0] == (3, 2, 1, 1)
    assert d["conv3"].local_max_lsb == 0  # downstream differences are propagated, not local


def test_tampered_fake_weight_scale_is_found(eager):
    mp, mq = eager
    bad = copy.deepcopy(mp)
    bad.conv3.weight_fake_quant.scale *= 1.05
    d = diagnose(bad, mq, X)
    assert d.first_divergence.name == "conv3" and d["conv3"].cause == CAUSES["weight_qparams"]
    assert d["conv1"].max_lsb == 0 and d["conv2"].max_lsb == 0


def test_diagnose_does_not_change_the_models(eager):
    mp, mq = eager
    before = {k: v.clone() for k, v in mp.state_dict().items()}
    diagnose(mp, mq, X)
    assert all(torch.equal(before[k], v) for k, v in mp.state_dict().items())


def test_bad_input_names_the_argument(eager):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        diagnose(*eager, [1.0])
    with pytest.raises(TypeError, match="prepared and converted must be"):
        diagnose("model", eager[1], X)
