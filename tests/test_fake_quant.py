"""qlab.fake_quant.FakeQuantize against torch.ao.quantization.FakeQuantize: forward and backward, bit for bit."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.ao.quantization as tq
import torch.ao.quantization.observer as tobs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import qlab
import qlab.observers as qobs
from qlab.fake_quant import FakeQuantize

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TWINS = {
    "minmax": (tobs.MinMaxObserver, qobs.MinMaxObserver),
    "moving": (tobs.MovingAverageMinMaxObserver, qobs.MovingAverageMinMaxObserver),
    "per-channel": (tobs.PerChannelMinMaxObserver, qobs.PerChannelMinMaxObserver),
    "moving-per-channel": (tobs.MovingAveragePerChannelMinMaxObserver, qobs.MovingAveragePerChannelMinMaxObserver),
    "histogram": (tobs.HistogramObserver, qobs.HistogramObserver),
}


def _pair(name, **kw):
    tcls, qcls = TWINS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reduce_range's "will be deprecated" notice
        return tq.FakeQuantize(tcls, **kw), FakeQuantize(qcls, **kw)


@st.composite
def fq_config(draw):
    name = draw(st.sampled_from(list(TWINS)))
    per_channel = "per-channel" in name
    dtype = draw(st.sampled_from([torch.quint8, torch.qint8]))
    symmetric = draw(st.booleans())
    reduce_range = draw(st.booleans())
    assume(not (symmetric and reduce_range and dtype == torch.quint8))
    qscheme = {
        (False, False): torch.per_tensor_affine,
        (False, True): torch.per_tensor_symmetric,
        (True, False): torch.per_channel_affine,
        (True, True): torch.per_channel_symmetric,
    }[(per_channel, symmetric)]
    kw = {"dtype": dtype, "qscheme": qscheme, "reduce_range": reduce_range}
    if draw(st.booleans()):  # the QAT default gives quant_min/quant_max explicitly
        kw["quant_min"], kw["quant_max"] = (0, 255) if dtype == torch.quint8 else (-128, 127)
    if per_channel:
        kw["ch_axis"] = draw(st.sampled_from([0, 1, 2]))  # torch's kernel refuses a negative axis
    if name.startswith("moving"):
        kw["averaging_constant"] = draw(st.sampled_from([0.01, 0.3, 1.0]))
    return name, kw


@SETTINGS
@given(
    cfg=fq_config(),
    seed=st.integers(0, 2**31 - 1),
    toggles=st.lists(st.sampled_from(["obs", "fq", "none"]), min_size=1, max_size=6),
)
def test_forward_backward_and_state_equal_torch(cfg, seed, toggles):
    name, kw = cfg
    t, q = _pair(name, **kw)
    g = torch.Generator().manual_seed(seed)
    for i, toggle in enumerate(["none"] + toggles):
        if toggle == "obs":
            on = bool(t.observer_enabled[0] == 0)
            t.enable_observer(on)
            q.enable_observer(on)
        elif toggle == "fq":
            on = bool(t.fake_quant_enabled[0] == 0)
            t.enable_fake_quant(on)
            q.enable_fake_quant(on)
        x = torch.randn(3, 4, 5, generator=g) * (1 + 3 * i)
        if i == 2:
            x[0, 0, 0] = 40.0  # an outlier: clamped, zero gradient
        xt, xq = x.clone().requires_grad_(), x.clone().requires_grad_()
        yt, yq = t(xt), q(xq)
        grad = torch.randn(yt.shape, generator=g)
        yt.backward(grad)
        yq.backward(grad)
        assert torch.equal(yt, yq)
        assert torch.equal(xt.grad, xq.grad)
        assert torch.equal(t.scale, q.scale) and torch.equal(t.zero_point, q.zero_point)
        assert t.zero_point.dtype == q.zero_point.dtype == torch.int32
    for a, b in zip(t.calculate_qparams(), q.calculate_qparams(), strict=False):
        assert torch.equal(a, b) and a.dtype == b.dtype


def test_negative_ch_axis_works_like_the_positive_one():
    x = torch.randn(3, 4, 5)
    a = FakeQuantize(qobs.PerChannelMinMaxObserver, ch_axis=-1)
    b = FakeQuantize(qobs.PerChannelMinMaxObserver, ch_axis=2)
    assert torch.equal(a(x), b(x))


def test_straight_through_gradient_is_the_in_range_mask():
    fq = FakeQuantize(qobs.MinMaxObserver)
    fq(torch.tensor([-1.0, 1.0]))  # range [-1, 1]
    fq.disable_observer()
    x = torch.tensor([-2.0, -0.5, 0.3, 1.0, 3.0], requires_grad=True)
    fq(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_state_dict_matches_torch_layout_and_round_trips():
    t, q = _pair("moving-per-channel", dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    x = torch.randn(4, 3)
    t(x)
    q(x)
    assert list(t.state_dict()) == list(q.state_dict())
    fresh = FakeQuantize(
        qobs.MovingAveragePerChannelMinMaxObserver, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    fresh.load_state_dict(t.state_dict())  # torch's state loads into qlab's module
    for a, b in zip(fresh.state_dict().values(), q.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    fresh.disable_observer()
    q.disable_observer()
    assert torch.equal(fresh(x), q(x))


@pytest.mark.parametrize(
    "cls,kw",
    [(qobs.PercentileObserver, {"percentile": 99.9}), (qobs.MSEObserver, {"quant_min": 0, "quant_max": 15})],
)
def test_runs_on_observers_without_a_torch_twin(cls, kw):
    fq = FakeQuantize(cls, **kw)
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((5000,))
    # Percentile cuts a far outlier; MSE keeps one that carries most of the squared error
    x = torch.cat([x, torch.tensor([500.0 if cls is qobs.PercentileObserver else 9.0])]).requires_grad_()
    y = fq(x)
    scale, zp = fq.calculate_qparams()
    assert torch.equal(fq.scale, scale) and torch.equal(fq.zero_point, zp.to(torch.int32))
    y.sum().backward()
    codes = torch.round(x.detach() * (1.0 / scale)) + zp
    inside = (codes >= fq.quant_min) & (codes <= fq.quant_max)
    assert torch.equal(x.grad, inside.float())  # straight through inside the range, 0 where clipped
    assert x.grad[-1] == 0 and 0 < int((~inside).sum()) < 100  # the tails are clipped


def test_nan_and_empty_input():
    fq = FakeQuantize()
    with pytest.raises(ValueError, match="x contains NaN"):
        fq(torch.tensor([1.0, float("nan")]))
    empty = torch.empty(0)
    assert fq(empty) is empty
    assert fq.scale.tolist() == [1.0] and fq.zero_point.tolist() == [0]


def test_bad_arguments():
    with pytest.raises(TypeError, match="observer must be"):
        FakeQuantize(observer=3)
    with pytest.raises(ValueError, match="give both quant_min and quant_max"):
        FakeQuantize(quant_min=0)
    with pytest.raises(ValueError, match="quant_max must lie in"):
        FakeQuantize(quant_min=0, quant_max=1000)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.fc(x.flatten(1)))


def _qat_qconfig(fq_cls, obs):
    act = fq_cls.with_args(observer=obs["moving"], quant_min=0, quant_max=255, reduce_range=True)
    wt = fq_cls.with_args(
        observer=obs["moving-per-channel"],
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
    )
    return tq.QConfig(activation=act, weight=wt)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_prepare_qat_train_convert_equals_torch():
    torch.manual_seed(0)
    base = _Net()
    models, opts = [], []
    for fq_cls, idx in ((tq.FakeQuantize, 0), (FakeQuantize, 1)):
        m = copy.deepcopy(base).train()
        m.qconfig = _qat_qconfig(fq_cls, {k: v[idx] for k, v in TWINS.items()})
        tq.prepare_qat(m, inplace=True)
        models.append(m)
        opts.append(torch.optim.SGD(m.parameters(), lr=0.1))
    g = torch.Generator().manual_seed(1)
    for _step in range(5):
        x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        outs = []
        for m, opt in zip(models, opts, strict=False):
            opt.zero_grad()
            out = m(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
            outs.append(out)
        assert torch.equal(outs[0], outs[1])
        for (n, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=False):
            assert torch.equal(a, b), n
    assert isinstance(models[1].conv.weight_fake_quant, FakeQuantize)
    models[0].apply(tq.disable_observer)
    models[1].apply(tq.disable_observer)  # torch.ao's helpers recognise qlab's module
    assert int(models[1].conv.weight_fake_quant.observer_enabled) == 0
    with qlab.scoped(engine="x86"):
        int8 = [tq.convert(m.eval()) for m in models]
    assert torch.equal(int8[0].conv.weight().int_repr(), int8[1].conv.weight().int_repr())
    x = torch.randn(8, 1, 6, 6, generator=g)
    assert torch.equal(int8[0](x), int8[1](x))
