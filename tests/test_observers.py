"""qlab.observers against torch.ao.quantization: bit for bit, with hypothesis."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.ao.quantization.observer as tobs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import qlab.observers as qobs
from qlab.primitives import fake_quantize

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HIST_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PAIRS_PER_TENSOR = [
    (tobs.MinMaxObserver, qobs.MinMaxObserver, {}),
    (tobs.MovingAverageMinMaxObserver, qobs.MovingAverageMinMaxObserver, {"averaging_constant": 0.01}),
    (tobs.MovingAverageMinMaxObserver, qobs.MovingAverageMinMaxObserver, {"averaging_constant": 0.37}),
    (tobs.MovingAverageMinMaxObserver, qobs.MovingAverageMinMaxObserver, {"averaging_constant": 1.0}),
]
PAIRS_PER_CHANNEL = [
    (tobs.PerChannelMinMaxObserver, qobs.PerChannelMinMaxObserver, {}),
    (
        tobs.MovingAveragePerChannelMinMaxObserver,
        qobs.MovingAveragePerChannelMinMaxObserver,
        {"averaging_constant": 0.01},
    ),
    (
        tobs.MovingAveragePerChannelMinMaxObserver,
        qobs.MovingAveragePerChannelMinMaxObserver,
        {"averaging_constant": 0.5},
    ),
]


# ------------------------------------------------------------------ strategies

f32 = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, allow_infinity=False, width=32)
f32_moderate = st.floats(min_value=-(2.0**20), max_value=2.0**20, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def batch(draw, shape=None, values=f32):
    """One float32 batch: hypothesis' own floats, or an adversarial pattern."""
    shape = shape or draw(st.sampled_from([(1,), (7,), (3, 5), (2, 3, 4), (2, 4, 3, 3)]))
    n = 1
    for d in shape:
        n *= d
    kind = draw(st.sampled_from(["floats", "normal", "zeros", "positive", "negative", "outlier", "constant"]))
    if kind == "floats":
        return torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float32).reshape(shape)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 37.5, 1e4]))
    x = torch.randn(shape, generator=g) * scale
    if kind == "zeros":
        x = torch.zeros(shape)
    elif kind == "positive":
        x = x.abs() + scale * 0.01
    elif kind == "negative":
        x = -x.abs() - scale * 0.01
    elif kind == "constant":
        x = torch.full(shape, draw(values))
    elif kind == "outlier":
        big = draw(st.sampled_from([1e3, 1e6, 1e12, -1e6]))
        x.view(-1)[draw(st.integers(0, n - 1))] = scale * big
    return x


@st.composite
def config(draw, per_channel=False):
    dtype = draw(st.sampled_from([torch.quint8, torch.qint8]))
    symmetric = draw(st.booleans())
    reduce_range = draw(st.booleans())
    custom = draw(st.booleans())
    kw = {"dtype": dtype, "reduce_range": reduce_range}
    if per_channel:
        kw["qscheme"] = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    else:
        kw["qscheme"] = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    if custom:
        if dtype == torch.quint8:
            kw["quant_min"], kw["quant_max"] = 0, draw(st.integers(1, 255))
        else:
            kw["quant_min"], kw["quant_max"] = draw(st.integers(-128, 0)), draw(st.integers(0, 127))
            assume(kw["quant_min"] < kw["quant_max"])
        if reduce_range:
            assume(kw["quant_min"] // 2 < kw["quant_max"] // 2)
    assume(not (symmetric and reduce_range and dtype == torch.quint8))  # both refuse it: tested below
    return kw


def _torch_obs(cls, **kw):
    with warnings.catch_warnings():  # reduce_range's "will be deprecated" notice
        warnings.simplefilter("ignore")
        return cls(**kw)


def assert_same_qparams(t, q):
    try:
        ts, tz = t.calculate_qparams()
    except AssertionError:
        # A moving average can end with min > max by one rounding (a constant batch with
        # averaging_constant near 1): torch.ao asserts, qlab raises a ValueError that says so.
        with pytest.raises(ValueError, match="min_val must be <= max_val"):
            q.calculate_qparams()
        return
    qs, qz = q.calculate_qparams()
    assert ts.dtype == qs.dtype and tz.dtype == qz.dtype, (ts.dtype, qs.dtype, tz.dtype, qz.dtype)
    assert ts.shape == qs.shape and tz.shape == qz.shape
    assert torch.equal(ts, qs), (ts, qs)
    assert torch.equal(tz, qz), (tz, qz)


def _finite_range(batches):
    lo = min(float(b.min()) for b in batches)
    hi = max(float(b.max()) for b in batches)
    return (max(hi, 0.0) - min(lo, 0.0)) < 3e38  # else the scale overflows (qlab raises: tested below)


# ------------------------------------------------------------------ bit-exactness


@pytest.mark.parametrize("tcls,qcls,extra", PAIRS_PER_TENSOR, ids=lambda v: getattr(v, "__name__", str(v)))
@SETTINGS
@given(kw=config(), batches=st.lists(batch(), min_size=1, max_size=6))
def test_per_tensor_minmax_observers_equal_torch(tcls, qcls, extra, kw, batches):
    assume(_finite_range(batches))
    t, q = _torch_obs(tcls, **kw, **extra), qcls(**kw, **extra)
    for b in batches:
        assert q(b) is b
        t(b)
    assert torch.equal(t.min_val, q.min_val) and torch.equal(t.max_val, q.max_val)
    assert_same_qparams(t, q)


@pytest.mark.parametrize("tcls,qcls,extra", PAIRS_PER_CHANNEL, ids=lambda v: getattr(v, "__name__", str(v)))
@SETTINGS
@given(
    kw=config(per_channel=True),
    shape=st.sampled_from([(3, 5), (2, 3, 4), (4, 2, 3, 3)]),
    axis=st.integers(-4, 3),
    n=st.integers(1, 5),
    data=st.data(),
)
def test_per_channel_observers_equal_torch(tcls, qcls, extra, kw, shape, axis, n, data):
    assume(-len(shape) <= axis < len(shape))
    batches = [data.draw(batch(shape=shape)) for _ in range(n)]
    assume(_finite_range(batches))
    t, q = _torch_obs(tcls, ch_axis=axis, **kw, **extra), qcls(ch_axis=axis, **kw, **extra)
    for b in batches:
        assert q(b) is b
        t(b)
    assert torch.equal(t.min_val, q.min_val) and torch.equal(t.max_val, q.max_val)
    assert_same_qparams(t, q)


@HIST_SETTINGS
@given(
    kw=config(),
    batches=st.lists(batch(values=f32_moderate), min_size=1, max_size=5),
    bins=st.sampled_from([2048, 256, 7]),
)
def test_histogram_observer_equals_torch(kw, batches, bins):
    t, q = _torch_obs(tobs.HistogramObserver, bins=bins, **kw), qobs.HistogramObserver(bins=bins, **kw)
    for b in batches:
        assert q(b) is b
        t(b)
    assert torch.equal(t.min_val, q.min_val) and torch.equal(t.max_val, q.max_val)
    assert torch.equal(t.histogram, q.histogram)  # the combine-histograms step, batch after batch
    assert_same_qparams(t, q)


@pytest.mark.parametrize(
    "batches",
    [
        [torch.zeros(10), torch.zeros(3)],  # all zero: scale = eps
        [torch.tensor([0.0, 1.0])],  # two values: torch's search runs ~1e5 steps
        [torch.full((10,), 2.0), torch.randn(100, generator=torch.Generator().manual_seed(1))],  # constant first
        [torch.randn(1000, generator=torch.Generator().manual_seed(2)), torch.tensor([1e6])],  # one huge outlier
        [torch.relu(torch.randn(64, 16, generator=torch.Generator().manual_seed(3))) * (1 + i) for i in range(12)],
        [-torch.rand(50, generator=torch.Generator().manual_seed(4)) * i for i in range(1, 5)],  # all negative
    ],
    ids=["zeros", "two-values", "constant-first", "outlier", "many-batches", "negative"],
)
@pytest.mark.parametrize(
    "kw", [{}, {"reduce_range": True}, {"dtype": torch.qint8, "qscheme": torch.per_tensor_symmetric}]
)
def test_histogram_adversarial_cases(batches, kw):
    t, q = _torch_obs(tobs.HistogramObserver, **kw), qobs.HistogramObserver(**kw)
    for b in batches:
        t(b)
        q(b)
    assert torch.equal(t.histogram, q.histogram)
    assert_same_qparams(t, q)


def test_many_batches_with_growing_range_equal_torch():
    g = torch.Generator().manual_seed(0)
    pairs = [(_torch_obs(tc, **e), qc(**e)) for tc, qc, e in PAIRS_PER_TENSOR]
    pairs.append((tobs.HistogramObserver(), qobs.HistogramObserver()))
    for i in range(40):
        b = torch.randn(256, generator=g) * (1 + i / 4) + i / 10
        for t, q in pairs:
            t(b)
            q(b)
    for t, q in pairs:
        assert_same_qparams(t, q)


# ------------------------------------------------------------------ contract


ALL = [
    qobs.MinMaxObserver,
    qobs.MovingAverageMinMaxObserver,
    qobs.PerChannelMinMaxObserver,
    qobs.MovingAveragePerChannelMinMaxObserver,
    qobs.HistogramObserver,
    qobs.PercentileObserver,
    qobs.MSEObserver,
]


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 5, generator=g) * (1 + i) for i in range(3)]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_state_dict_round_trip(cls):
    a = cls()
    for b in _batches():
        a(b)
    b = cls()
    b.load_state_dict(a.state_dict())
    for x, y in zip(a.calculate_qparams(), b.calculate_qparams(), strict=False):
        assert torch.equal(x, y) and x.dtype == y.dtype
    assert set(a.state_dict()) == set(b.state_dict())


@pytest.mark.parametrize(
    "tcls,qcls",
    [
        (tobs.MinMaxObserver, qobs.MinMaxObserver),
        (tobs.MovingAverageMinMaxObserver, qobs.MovingAverageMinMaxObserver),
        (tobs.PerChannelMinMaxObserver, qobs.PerChannelMinMaxObserver),
        (tobs.MovingAveragePerChannelMinMaxObserver, qobs.MovingAveragePerChannelMinMaxObserver),
        (tobs.HistogramObserver, qobs.HistogramObserver),
    ],
)
def test_torch_state_dict_loads_into_qlab_twin(tcls, qcls):
    t = tcls()
    for b in _batches():
        t(b)
    q = qcls()
    q.load_state_dict(t.state_dict())
    assert_same_qparams(t, q)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_raise_and_leave_state_alone(cls, bad):
    obs = cls()
    x = _batches()[0]
    obs(x)
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    y = x.clone()
    y[0, 0, 0] = bad
    with pytest.raises(ValueError, match="x contains (NaN|inf)"):
        obs(y)
    after = obs.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_calculate_before_data_raises(cls):
    obs = cls()
    obs(torch.empty(0))  # an empty batch is ignored, as in torch.ao
    with pytest.raises(RuntimeError, match="has not observed any data"):
        obs.calculate_qparams()


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_forward_returns_input_and_is_a_torch_observer(cls):
    obs = cls()
    x = torch.randn(2, 3, 4, requires_grad=True)
    assert obs(x) is x
    assert isinstance(obs, torch.ao.quantization.ObserverBase)
    built = cls.with_args(dtype=torch.qint8)()
    assert built.dtype == torch.qint8


def test_float64_input_is_refused():
    with pytest.raises(TypeError, match="x must have dtype torch.float32"):
        qobs.MinMaxObserver()(torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        ({"dtype": torch.qint32}, ValueError, "dtype must be one of"),
        ({"qscheme": torch.per_channel_affine}, ValueError, "qscheme must be one of"),
        ({"quant_min": 0}, ValueError, "give both quant_min and quant_max"),
        ({"quant_min": 1, "quant_max": 10}, ValueError, "quant_min <= 0 <= quant_max"),
        ({"quant_min": 0, "quant_max": 300}, ValueError, "quant_max must lie in"),
        ({"quant_min": 0, "quant_max": 1, "reduce_range": True}, ValueError, "halves the custom range"),
        ({"qscheme": torch.per_tensor_symmetric, "reduce_range": True}, ValueError, "reduce_range cannot be combined"),
        ({"reduce_range": 1}, TypeError, "reduce_range must be a bool"),
        ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        qobs.MinMaxObserver(**kwargs)


def test_symmetric_reduce_range_quint8_refused_by_both_minmax():
    kw = {"qscheme": torch.per_tensor_symmetric, "reduce_range": True}
    with pytest.raises(NotImplementedError):
        _torch_obs(tobs.MinMaxObserver, **kw)
    with pytest.raises(ValueError):
        qobs.MinMaxObserver(**kw)
    with pytest.raises(ValueError):  # torch.ao's HistogramObserver accepts it, with zero point 128 outside [0, 127]
        qobs.HistogramObserver(**kw)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="averaging_constant"):
        qobs.MovingAverageMinMaxObserver(averaging_constant=0)
    with pytest.raises(ValueError, match="bins"):
        qobs.HistogramObserver(bins=0)
    with pytest.raises(ValueError, match="percentile"):
        qobs.PercentileObserver(percentile=40)
    with pytest.raises(ValueError, match="candidates"):
        qobs.MSEObserver(candidates=1)
    with pytest.raises(ValueError, match="smallest"):
        qobs.MSEObserver(smallest=0.0)
    with pytest.raises(TypeError, match="ch_axis"):
        qobs.PerChannelMinMaxObserver(ch_axis=1.0)
    obs = qobs.PerChannelMinMaxObserver(ch_axis=1)
    obs(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="channels along ch_axis=1"):
        obs(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):  # torch.ao: IndexError
        qobs.PerChannelMinMaxObserver()(torch.zeros(3))
    with pytest.raises(ValueError, match="ch_axis must be in"):
        qobs.PerChannelMinMaxObserver(ch_axis=3)(torch.zeros(2, 3))


def test_overflowing_range_raises():
    obs = qobs.MinMaxObserver()
    obs(torch.tensor([-3e38, 3e38]))
    with pytest.raises(ValueError, match="too wide"):
        obs.calculate_qparams()


def test_histogram_state_with_other_bins_is_refused():
    a = qobs.HistogramObserver(bins=16)
    a(torch.randn(10))
    with pytest.raises(ValueError, match="16 bins"):
        qobs.HistogramObserver(bins=32).load_state_dict(a.state_dict())


def test_reset_min_max_vals():
    for cls in (qobs.MinMaxObserver, qobs.PerChannelMinMaxObserver):
        obs = cls()
        obs(torch.randn(3, 4))
        obs.reset_min_max_vals()
        with pytest.raises(RuntimeError):
            obs.calculate_qparams()


# ------------------------------------------------------------------ Percentile and MSE (no torch twin)


@SETTINGS
@given(batches=st.lists(batch(values=f32_moderate), min_size=1, max_size=4), p=st.floats(90.0, 100.0))
def test_percentile_range_lies_within_minmax_and_clips_at_most_the_tails(batches, p):
    obs = qobs.PercentileObserver(percentile=p)
    for b in batches:
        obs(b)
    lo, hi = obs.chosen_range()
    assert lo.dtype == hi.dtype == torch.float32
    assert obs.min_val <= lo <= hi <= obs.max_val
    scale, zp = obs.calculate_qparams()
    assert scale.shape == zp.shape == (1,) and bool(torch.isfinite(scale).all())


def test_percentile_100_is_min_max_and_clips_an_outlier():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g)
    obs = qobs.PercentileObserver(percentile=100.0)
    obs(x)
    assert [float(v) for v in obs.chosen_range()] == [float(x.min()), float(x.max())]
    obs = qobs.PercentileObserver(percentile=99.0)
    obs(torch.cat([x, torch.tensor([1e4])]))
    lo, hi = obs.chosen_range()
    width = (float(obs.max_val) - float(obs.min_val)) / obs.bins
    assert abs(float(hi) - float(torch.quantile(x, 0.99))) < width + 0.02  # a bin of resolution
    assert abs(float(lo) - float(torch.quantile(x, 0.01))) < width + 0.02


@SETTINGS
@given(batches=st.lists(batch(values=f32_moderate), min_size=1, max_size=4), sym=st.booleans())
def test_mse_choice_is_a_coordinatewise_grid_minimum(batches, sym):
    qs = torch.per_tensor_symmetric if sym else torch.per_tensor_affine
    obs = qobs.MSEObserver(candidates=12, dtype=torch.qint8, qscheme=qs)
    for b in batches:
        obs(b)
    lo, hi = obs.candidates_lo_hi()
    assert lo[0] == min(float(obs.min_val), 0.0) and hi[0] == max(float(obs.max_val), 0.0)
    best_lo, best_hi = obs.chosen_range()
    assert best_lo in lo and best_hi in hi
    best = obs.mse(best_lo, best_hi)
    assert best <= obs.mse(lo[0], hi[0])  # no worse than the full range
    assert best <= obs.mse(best_lo, hi).min() and best <= obs.mse(lo, best_hi).min()


def _true_mse(x, obs):
    scale, zp = obs.calculate_qparams()
    return float(
        ((fake_quantize(x, scale, zp, obs.dtype, quant_min=obs.quant_min, quant_max=obs.quant_max) - x) ** 2).mean()
    )


@pytest.mark.parametrize("dist", ["normal", "laplace", "relu", "uniform", "outliers"])
def test_mse_observer_beats_minmax_on_the_data(dist):
    g = torch.Generator().manual_seed(0)
    x = {
        "normal": lambda: torch.randn(20_000, generator=g),
        "laplace": lambda: torch.distributions.Laplace(0.0, 1.0).sample((20_000,)),
        "relu": lambda: torch.relu(torch.randn(20_000, generator=g)),
        "uniform": lambda: torch.rand(20_000, generator=g),
        "outliers": lambda: torch.cat([torch.randn(20_000, generator=g), 30 * torch.randn(20, generator=g)]),
    }[dist]()
    for kw in ({}, {"quant_min": 0, "quant_max": 15}):  # 8 and 4 bits
        mse, mm, hist = qobs.MSEObserver(**kw), qobs.MinMaxObserver(**kw), qobs.HistogramObserver(**kw)
        for obs in (mse, mm, hist):
            obs(x)
        assert _true_mse(x, mse) <= 1.02 * min(_true_mse(x, mm), _true_mse(x, hist))
        if kw and dist != "uniform":  # at 4 bits clipping the tails pays
            assert _true_mse(x, mse) < 0.75 * _true_mse(x, mm)
