"""qlab.primitives against PyTorch, bit for bit (property-based), and its errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import qlab
from qlab import PerChannel, PerTensor

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions:UserWarning")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RANGES = {torch.quint8: (0, 255), torch.qint8: (-128, 127), torch.qint32: (-(2**31), 2**31 - 1)}

f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
scales = st.floats(1e-7, 1e4, allow_nan=False).map(
    lambda v: float(torch.tensor(v, dtype=torch.float32))
) | st.sampled_from([1.0, 0.1, 1 / 255, 2 / 255, 1e-3])
dtypes = st.sampled_from([torch.quint8, torch.qint8, torch.qint32])
shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4)


@st.composite
def tensors(draw, shape=None):
    shape = draw(shapes) if shape is None else shape
    n = 1
    for s in shape:
        n *= s
    # mostly moderate values (where rounding ties live), some extreme ones
    elems = st.one_of(
        st.floats(-300, 300, allow_nan=False, width=32),
        st.integers(-300, 300).map(lambda i: i / 2),  # exact .5 ties
        f32,
    )
    vals = draw(st.lists(elems, min_size=n, max_size=n))
    return torch.tensor(vals, dtype=torch.float32).reshape(shape)


@st.composite
def zero_points(draw, dtype):
    lo, hi = RANGES[dtype]
    return draw(st.integers(lo, hi) if dtype != torch.qint32 else st.integers(-1000, 1000))


def _int32_overflow(x, scale, zp) -> bool:
    """True where round(x / scale) + zero_point leaves int32: PyTorch's conversion overflows there."""
    scale = torch.as_tensor(scale).to(torch.float32)
    r = torch.round(x * (1.0 / scale)).double() + torch.as_tensor(zp).double()
    return bool((r.abs() >= 2**31 - 256).any())


def test_int32_overflow_differs_on_purpose():
    """|x / scale| near 2**31: PyTorch's float->int32 conversion overflows and (for quint8 with
    zero_point >= 128) returns the wrong end of the range; qlab saturates."""
    x = torch.full((9,), 215.0)
    scale = float(torch.tensor(1e-7, dtype=torch.float32))
    ref = torch.quantize_per_tensor(x, scale, 128, torch.quint8).int_repr()
    assert ref.unique().tolist() == [0]  # 2.15e9 codes above zero became the smallest code
    assert qlab.quantize(x, scale, 128, torch.quint8).unique().tolist() == [255]


@SETTINGS
@given(data=st.data(), dtype=dtypes, scale=scales)
def test_quantize_dequantize_per_tensor_match_torch(data, dtype, scale):
    x = data.draw(tensors())
    zp = data.draw(zero_points(dtype))
    ref = torch.quantize_per_tensor(x, scale, zp, dtype)
    q = qlab.quantize(x, scale, zp, dtype)
    assert q.dtype == ref.int_repr().dtype
    if _int32_overflow(x, scale, zp):
        return  # PyTorch's float->int32 conversion overflows: see test_int32_overflow_differs_on_purpose
    assert torch.equal(q, ref.int_repr())
    diff = q.long() - zp
    if dtype == torch.qint32 and bool(((diff < -(2**31)) | (diff >= 2**31)).any()):
        return  # PyTorch's q - zp wraps around in int32 here: see test_qint32_dequantize_overflow
    assert torch.equal(qlab.dequantize(q, scale, zp), ref.dequantize())


def test_qint32_dequantize_overflow_differs_on_purpose():
    """PyTorch computes q - zero_point in int32 and wraps; qlab computes it exactly."""
    q = torch.tensor([-(2**31)], dtype=torch.int32)
    ref = torch._make_per_tensor_quantized_tensor(q, 1.0, 1).dequantize()
    assert ref.item() > 2e9  # wrapped: the most negative code became a large positive value
    assert qlab.dequantize(q, 1.0, 1).item() < -2e9


@SETTINGS
@given(data=st.data(), dtype=dtypes)
def test_quantize_dequantize_per_channel_match_torch(data, dtype):
    x = data.draw(tensors())
    axis = data.draw(st.integers(0, x.dim() - 1))
    c = x.shape[axis]
    scale = torch.tensor(data.draw(st.lists(scales, min_size=c, max_size=c)), dtype=torch.float64)
    zp = torch.tensor(data.draw(st.lists(zero_points(dtype), min_size=c, max_size=c)), dtype=torch.int64)
    ref = torch.quantize_per_channel(x, scale, zp, axis, dtype)
    q = qlab.quantize(x, scale, zp, dtype, PerChannel(axis))
    shape = [1] * x.dim()
    shape[axis] = -1
    if _int32_overflow(x, scale.reshape(shape), zp.reshape(shape)):
        return  # see test_int32_overflow_differs_on_purpose
    assert torch.equal(q, ref.int_repr())
    assert torch.equal(qlab.dequantize(q, scale, zp, PerChannel(axis)), ref.dequantize())


def test_dequantize_per_channel_int32_rounds_like_torch():
    """Found by hypothesis: PyTorch subtracts the zero point from an int32 code in float32.
    (40000000 - 2) * 1e-7 is 3.9999998 exactly, but float32(40000000) - 2 = 4e7, so PyTorch gives 4.0."""
    q = torch.tensor([[2, 2, 40_000_000], [0, 0, 0]], dtype=torch.int32)
    scale = torch.tensor([1e-7, 1.0], dtype=torch.float64)
    zp = torch.tensor([2, 0])
    ref = torch._make_per_channel_quantized_tensor(q, scale, zp, 0).dequantize()
    assert ref[0, 2].item() == 4.0
    assert torch.equal(qlab.dequantize(q, scale, zp, PerChannel(0)), ref)


@st.composite
def qranges(draw):
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    lo = -(2 ** (bits - 1)) if signed else 0
    return lo, lo + 2**bits - 1


@SETTINGS
@given(data=st.data(), scale=scales, qr=qranges())
def test_fake_quantize_per_tensor_forward_backward_match_torch(data, scale, qr):
    qmin, qmax = qr
    x = data.draw(tensors())
    zp = data.draw(st.integers(qmin, qmax))
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ref = torch.fake_quantize_per_tensor_affine(x1, scale, zp, qmin, qmax)
    out = qlab.fake_quantize(x2, scale, zp, torch.qint32, quant_min=qmin, quant_max=qmax)
    if _int32_overflow(x, scale, zp):
        return  # see test_int32_overflow_differs_on_purpose
    assert torch.equal(out, ref)
    g = torch.randn_like(x)
    ref.backward(g)
    out.backward(g)
    assert torch.equal(x2.grad, x1.grad)


@SETTINGS
@given(data=st.data(), qr=qranges())
def test_fake_quantize_per_channel_forward_backward_match_torch(data, qr):
    qmin, qmax = qr
    x = data.draw(tensors())
    axis = data.draw(st.integers(0, x.dim() - 1))
    c = x.shape[axis]
    scale = torch.tensor(data.draw(st.lists(scales, min_size=c, max_size=c)), dtype=torch.float32)
    zp = torch.tensor(data.draw(st.lists(st.integers(qmin, qmax), min_size=c, max_size=c)), dtype=torch.int32)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ref = torch.fake_quantize_per_channel_affine(x1, scale, zp, axis, qmin, qmax)
    out = qlab.fake_quantize(x2, scale, zp, torch.qint32, PerChannel(axis), quant_min=qmin, quant_max=qmax)
    shape = [1] * x.dim()
    shape[axis] = -1
    if _int32_overflow(x, scale.reshape(shape), zp.reshape(shape)):
        return  # see test_int32_overflow_differs_on_purpose
    assert torch.equal(out, ref)
    g = torch.randn_like(x)
    ref.backward(g)
    out.backward(g)
    assert torch.equal(x2.grad, x1.grad)


def test_round_half_to_even_ties():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert qlab.quantize(x, 1.0, 10, torch.quint8).tolist() == [10, 12, 12, 10, 8, 8]


@SETTINGS
@given(
    lo=st.floats(-1e6, 0, allow_nan=False, width=32) | st.sampled_from([0.0, -1e-30]),
    hi=st.floats(0, 1e6, allow_nan=False, width=32) | st.sampled_from([0.0, 1e-30]),
    shift=st.floats(-10, 10, width=32),
    dtype=st.sampled_from([torch.quint8, torch.qint8]),
    symmetric=st.booleans(),
    reduce_range=st.booleans(),
)
def test_choose_qparams_matches_torch_observer(lo, hi, shift, dtype, symmetric, reduce_range):
    from torch.ao.quantization import MinMaxObserver

    mn, mx = torch.tensor(lo + shift), torch.tensor(hi + shift)
    assume(float(mn) <= float(mx))
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    if symmetric and reduce_range and dtype == torch.quint8:  # torch.ao refuses this combination too
        with pytest.raises(ValueError, match="reduce_range is not supported with symmetric quint8"):
            qlab.choose_qparams(mn, mx, dtype=dtype, symmetric=True, reduce_range=True)
        return
    obs = MinMaxObserver(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range)
    obs(torch.stack([mn, mx]))
    s_ref, z_ref = obs.calculate_qparams()
    s, z = qlab.choose_qparams(mn, mx, dtype=dtype, symmetric=symmetric, reduce_range=reduce_range)
    assert torch.equal(s, s_ref) and s.dtype == s_ref.dtype
    assert torch.equal(z, z_ref) and z.dtype == z_ref.dtype


@SETTINGS
@given(data=st.data(), symmetric=st.booleans(), dtype=st.sampled_from([torch.quint8, torch.qint8]))
def test_choose_qparams_per_channel_matches_torch(data, symmetric, dtype):
    from torch.ao.quantization import PerChannelMinMaxObserver

    x = data.draw(tensors(shape=[data.draw(st.integers(1, 5)), 4]))
    assume(bool((x.abs() < 1e30).all()))
    qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, qscheme=qscheme)
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    s, z = qlab.choose_qparams(x.amin(1), x.amax(1), dtype=dtype, symmetric=symmetric)
    assert torch.equal(s, s_ref)
    assert torch.equal(z, z_ref) and z.dtype == z_ref.dtype


def test_choose_qparams_custom_range_matches_torch():
    from torch.ao.quantization import MinMaxObserver

    x = torch.tensor([-1.3, 0.2, 2.7])
    for symmetric in (False, True):
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=qscheme, quant_min=0, quant_max=15)
        obs(x)
        s, z = qlab.choose_qparams(x.min(), x.max(), symmetric=symmetric, quant_min=0, quant_max=15)
        s_ref, z_ref = obs.calculate_qparams()
        assert torch.equal(s, s_ref) and torch.equal(z, z_ref)


def test_zero_is_exactly_representable():
    for lo, hi in [(-1.0, 3.0), (0.5, 3.0), (-7.3, -0.2), (-0.013, 250.0)]:
        s, z = qlab.choose_qparams(torch.tensor(lo), torch.tensor(hi))
        q0 = qlab.quantize(torch.zeros(1), s, z)
        assert qlab.dequantize(q0, s, z).item() == 0.0


def test_qrange():
    assert qlab.qrange(torch.quint8) == (0, 255)
    assert qlab.qrange(torch.qint8) == (-128, 127)
    assert qlab.qrange(torch.quint8, reduce_range=True) == (0, 127)
    assert qlab.qrange(torch.qint8, reduce_range=True) == (-64, 63)
    assert qlab.qrange(torch.qint8, bits=4) == (-8, 7)
    assert qlab.qrange(torch.quint8, bits=2) == (0, 3)


# ---- bad input: a clear error naming the argument and the allowed values ----

X = torch.randn(4, 3)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: qlab.quantize(X.double(), 0.1, 0), TypeError, "x must have dtype torch.float32"),
        (lambda: qlab.quantize([1.0], 0.1, 0), TypeError, "x must be a torch.Tensor"),
        (lambda: qlab.quantize(X, 0.0, 0), ValueError, "scale must be positive"),
        (lambda: qlab.quantize(X, -1.0, 0), ValueError, "scale must be positive"),
        (lambda: qlab.quantize(X, float("nan"), 0), ValueError, "scale must be positive and finite"),
        (lambda: qlab.quantize(X, "0.1", 0), TypeError, "scale must be a float"),
        (lambda: qlab.quantize(X, 0.1, 256), ValueError, r"zero_point must lie in \[0, 255\]"),
        (lambda: qlab.quantize(X, 0.1, -129, torch.qint8), ValueError, r"zero_point must lie in \[-128, 127\]"),
        (lambda: qlab.quantize(X, 0.1, 1.5), TypeError, "zero_point must be an int"),
        (lambda: qlab.quantize(X, 0.1, 0, torch.float16), ValueError, "dtype must be one of"),
        (lambda: qlab.quantize(X, 0.1, 0, quant_min=0, quant_max=300), ValueError, "quant_max must lie in"),
        (lambda: qlab.quantize(X, 0.1, 0, quant_min=5, quant_max=5), ValueError, "quant_min must be < quant_max"),
        (lambda: qlab.quantize(torch.tensor([float("nan")]), 0.1, 0), ValueError, "x contains NaN"),
        (lambda: qlab.quantize(torch.tensor([float("inf")]), 0.1, 0), ValueError, "x contains inf"),
        (lambda: qlab.quantize(X, 0.1, 0, granularity="per_channel"), TypeError, "granularity must be"),
        (
            lambda: qlab.quantize(X, torch.ones(2), torch.zeros(2, dtype=torch.long), torch.quint8, PerChannel(1)),
            ValueError,
            r"scale must be a 1-D tensor with 3 values",
        ),
        (
            lambda: qlab.quantize(X, torch.ones(3), torch.zeros(3, dtype=torch.long), torch.quint8, PerChannel(2)),
            ValueError,
            r"granularity.axis must be in \[-2, 1\]",
        ),
        (
            lambda: qlab.quantize(X, torch.ones(3), torch.zeros(3, dtype=torch.long), torch.quint8, PerTensor()),
            ValueError,
            "scale must hold one value for PerTensor",
        ),
        (
            lambda: qlab.quantize(
                X, torch.tensor([1.0, -1, 1]), torch.zeros(3, dtype=torch.long), torch.quint8, PerChannel(1)
            ),
            ValueError,
            "scale must be positive",
        ),
        (
            lambda: qlab.quantize(X, torch.ones(3), torch.zeros(3), torch.quint8, PerChannel(1)),
            TypeError,
            "zero_point must be an integer tensor",
        ),
        (lambda: qlab.dequantize(X, 0.1, 0), TypeError, "q must have dtype torch.uint8, torch.int8 or torch.int32"),
        (
            lambda: qlab.dequantize(torch.zeros(3, dtype=torch.uint8), 0.1, 300),
            ValueError,
            r"zero_point must lie in \[0, 255\]",
        ),
        (lambda: qlab.fake_quantize(X, 0.1, 0, quant_min=10, quant_max=5), ValueError, "quant_min must be < quant_max"),
        (lambda: qlab.fake_quantize(X, 0.1, 20, quant_max=15), ValueError, r"zero_point must lie in \[0, 15\]"),
        (lambda: qlab.fake_quantize(X, 0.1, 0, quant_min=0.0, quant_max=15), TypeError, "quant_min must be an int"),
        (lambda: qlab.fake_quantize(X, 0.1, 0, 0, 15), ValueError, "dtype must be one of"),
        (lambda: qlab.choose_qparams(torch.tensor(1.0), torch.tensor(0.0)), ValueError, "min_val must be <= max_val"),
        (
            lambda: qlab.choose_qparams(torch.tensor(float("nan")), torch.tensor(0.0)),
            ValueError,
            "min_val contains NaN",
        ),
        (
            lambda: qlab.choose_qparams(torch.tensor(0.0), torch.tensor(float("inf"))),
            ValueError,
            "max_val contains inf",
        ),
        (lambda: qlab.choose_qparams(torch.zeros(2), torch.zeros(3)), ValueError, "one shape"),
        (lambda: qlab.choose_qparams(0.0, 1.0, dtype=torch.qint32), ValueError, "dtype must be one of"),
        (lambda: qlab.choose_qparams(0.0, 1.0, reduce_range=True, quant_max=100), ValueError, "reduce_range cannot"),
        (lambda: qlab.qrange(torch.qint8, bits=9), ValueError, r"bits must be an int in \[2, 8\]"),
        (lambda: qlab.qrange(torch.qint8, bits=1), ValueError, r"bits must be an int in \[2, 8\]"),
        (lambda: qlab.qrange(torch.float32), ValueError, "dtype must be one of"),
        (lambda: qlab.setup(seed=-1, quiet=True), ValueError, "seed must be"),
        (lambda: qlab.setup(threads=0, quiet=True), ValueError, "threads must be"),
    ],
)
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
