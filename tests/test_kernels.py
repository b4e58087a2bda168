"""qlab.kernels: the C++ int8 ops against the pure-PyTorch reference and against PyTorch itself.

* every CPU path (scalar, AVX2, AVX-512 VNNI) equals ``qlab.kernels.reference`` bit for bit,
  on edge cases and on random problems (hypothesis), for 1 and 2 threads;
* ``int8_linear`` in float mode equals ``torch.ao.nn.quantized.Linear`` (x86 engine) bit for bit;
* ``torch.library.opcheck``, ``torch.compile`` and ``torch.export``;
* errors name the argument and the allowed values.
The fallback, the build cache and QLAB_ISA run in subprocesses: tests/test_kernels_subprocess.py.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from fractions import Fraction

import pytest
import torch
from fbgemm_units import fbgemm_safe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlab
import qlab.kernels as qk
from qlab import requant as RQ
from qlab.kernels import _ops
from qlab.kernels import reference as R

NATIVE = qk.backend() == "native"
needs_native = pytest.mark.skipif(not NATIVE, reason=f"C++ extension not loaded: {_ops.state['error']}")
PATHS = qk.available_isas()
QRANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}
OUT_DTYPES = [torch.uint8, torch.int8, torch.int32, torch.float32]
HYP = settings(
    deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def _restore_isa_and_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    qk.set_isa("auto")


def codes(shape, dtype, gen, fill=None):
    lo, hi = QRANGE[dtype]
    if fill == "min":
        return torch.full(shape, lo, dtype=dtype)
    if fill == "max":
        return torch.full(shape, hi, dtype=dtype)
    return torch.randint(lo, hi + 1, shape, dtype=dtype, generator=gen)


def out_qparams(out_dtype, scale=0.37, zp=None):
    """(out_scale, out_zero_point) as the op takes them: unused (1.0, 0) for int32/float32 outputs."""
    if out_dtype in QRANGE:
        lo, hi = QRANGE[out_dtype]
        return scale, (lo + hi + 1) // 2 if zp is None else zp
    return 1.0, 0


def check_all_paths(op: str, args: tuple, threads=(None,)):
    """torch.ops.qlab.<op>(*args) on every path (and thread count) equals reference.<op>(*args)."""
    want = getattr(R, op)(*args)
    for name in PATHS:
        for n in threads:
            if n is not None:
                torch.set_num_threads(n)
            with qk.use_isa(name):
                got = getattr(torch.ops.qlab, op)(*args)
            assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape, want.shape)
            if not torch.equal(got, want):
                diff = (got.double() - want.double()).abs()
                pytest.fail(
                    f"{op} on {name} ({n} threads): {int((diff > 0).sum())} of {want.numel()} differ, max {diff.max()}"
                )
    return want


# ----------------------------------------------------------------------------------------------
# int8_bmm against the reference


BMM_SHAPES = [  # (batch, M, N, K): K not a multiple of 4/16/64, M or N = 1, empty dimensions
    (1, 1, 1, 1),
    (2, 1, 5, 3),
    (2, 5, 1, 7),
    (1, 9, 17, 5),
    (2, 8, 48, 4),
    (1, 13, 49, 63),
    (1, 3, 50, 65),
    (2, 17, 16, 197),
    (1, 33, 97, 129),
    (0, 4, 4, 4),
    (2, 0, 5, 3),
    (2, 5, 0, 3),
    (2, 3, 5, 0),
]


@needs_native
@pytest.mark.parametrize("a_dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("shape", BMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bmm_edge_shapes_all_paths(shape, transpose_b, a_dtype):
    B, M, N, K = shape
    g = torch.Generator().manual_seed(hash((shape, transpose_b, str(a_dtype))) % 2**31)
    a = codes((B, M, K), a_dtype, g)
    b = codes((B, N, K) if transpose_b else (B, K, N), torch.int8, g)
    lo, hi = QRANGE[a_dtype]
    for i, out_dtype in enumerate(OUT_DTYPES):
        for requant in ("float", "fixed"):
            za = [lo, hi, (lo + hi) // 2 + 3][i % 3]  # zero points at both extremes, and between
            zb = [127, -128, 5, 0][i]
            so, zo = out_qparams(out_dtype, scale=0.05 * (i + 1))
            check_all_paths("int8_bmm", (a, b, 0.011, za, 0.023, zb, so, zo, out_dtype, transpose_b, requant))


@needs_native
@pytest.mark.parametrize("a_dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("a_fill", ["min", "max"])
@pytest.mark.parametrize("b_fill", ["min", "max"])
def test_bmm_extreme_values_and_saturation(a_dtype, a_fill, b_fill):
    """Values at -128/127/255, zero points at the far end: the largest accumulators, outputs that must saturate.

    K = 2 with a = 255, b = 127 is exactly where AVX2's vpmaddubsw would saturate (255*127*2 > 32767).
    """
    g = torch.Generator().manual_seed(1)
    lo, hi = QRANGE[a_dtype]
    for K in (2, 197):
        a = codes((2, 7, K), a_dtype, g, a_fill)
        b = codes((2, K, 19), torch.int8, g, b_fill)
        for za in (lo, hi):
            for zb in (-128, 127):
                for out_dtype in OUT_DTYPES:
                    # tiny out_scale: everything clamps; multiplier > 1 (fixed mode: saturating left shift);
                    # multiplier < 2^-32 (fixed mode: the product is 0)
                    for sa, sb, so in ((0.05, 0.05, 1e-4), (1.0, 1.0, 1e-4), (1e-10, 1e-10, 10.0), (0.02, 0.01, 3.0)):
                        for requant in ("float", "fixed"):
                            if out_dtype not in QRANGE and requant == "fixed":
                                continue  # int32/float32 outputs: requant and out_scale change nothing
                            if out_dtype == torch.int32 and sa != 0.05:
                                continue  # int32: the input scales change nothing either
                            so_, zo = out_qparams(out_dtype, scale=so)
                            check_all_paths("int8_bmm", (a, b, sa, za, sb, zb, so_, zo, out_dtype, False, requant))


@needs_native
def test_bmm_int32_wraps_like_int32_hardware():
    """K = 40000 at full scale overflows int32 (the limit is K = 33025): every path wraps modulo 2^32 the same way."""
    a = torch.full((1, 2, 40000), 255, dtype=torch.uint8)
    b = torch.full((1, 40000, 3), -128, dtype=torch.int8)
    want = check_all_paths("int8_bmm", (a, b, 1.0, 0, 1.0, 127, 1.0, 0, torch.int32, False, "float"))
    exact = 255 * (-128 - 127) * 40000
    assert exact < -(2**31) and int(want[0, 0, 0]) == (exact + 2**31) % 2**32 - 2**31


@needs_native
def test_bmm_strided_and_transposed_views():
    """Any strides are read in place: sliced rows, transposed operands, permuted 4-D attention tensors, stride 0."""
    g = torch.Generator().manual_seed(2)
    B, M, N, K = 3, 11, 37, 70
    cases = []
    big = codes((B, 2 * M, K + 5), torch.uint8, g)
    a_rows = big[:, ::2, 2 : K + 2]  # row stride 2*(K+5), offset 2
    a_cols = codes((B, K, M), torch.int8, g).transpose(-1, -2)  # column stride M
    b_nk = codes((B, N, K), torch.int8, g)
    b_kn = codes((B, K, N), torch.int8, g)
    b_odd = codes((B, 2 * K, 3 * N), torch.int8, g)[:, ::2, ::3]  # no unit stride at all
    b_bcast = codes((1, K, N), torch.int8, g).expand(B, K, N)  # batch stride 0
    for a in (a_rows, a_cols):
        cases += [
            (a, b_nk.transpose(-1, -2), False),  # B given as a transposed view of [N, K]
            (a, b_kn.transpose(-1, -2), True),  # transpose_b of a transposed view: B row-major
            (a, b_nk, True),
            (a, b_kn, False),
            (a, b_odd, False),
            (a, b_bcast, False),
        ]
    for a, b, tb in cases:
        assert not (a.is_contiguous() and b.is_contiguous())
        check_all_paths("int8_bmm", (a, b, 0.02, 3, 0.01, -2, 0.4, 9, torch.int8, tb, "float"))
        check_all_paths("int8_bmm", (a, b, 0.02, 3, 0.01, -2, 1.0, 0, torch.int32, tb, "fixed"))


@needs_native
def test_bmm_rows_read_in_place_past_k():
    """The AMX path reads uint8 rows in place in blocks of 64 bytes, past K into the next row's bytes
    (they meet B's zero padding); rows whose over-read could leave A's memory are copied instead."""
    g = torch.Generator().manual_seed(5)
    B, N = 2, 21
    cases = []
    for M, K, pad in ((50, 70, 5), (40, 5, 0), (33, 64, 0), (64, 130, 0), (48, 3, 61)):
        big = codes((B, M, K + pad), torch.uint8, g)
        cases.append((big[:, :, :K] if pad else big, K))
    cases.append((codes((B, 1, 70), torch.uint8, g).expand(B, 40, 70), 70))  # row stride 0
    for a, K in cases:
        b = codes((B, N, K), torch.int8, g)
        check_all_paths("int8_bmm", (a, b, 0.02, 7, 0.01, 0, 0.4, 9, torch.int8, True, "float"))
        check_all_paths(
            "int8_bmm", (a, b.transpose(-1, -2).contiguous(), 0.02, 255, 0.01, -3, 1.0, 0, torch.int32, False, "float")
        )


@needs_native
def test_bmm_attention_layout_4d():
    """q·kᵀ and attn·v straight from a fused qkv tensor [B, T, 3, H, D] (permuted 4-D views, no copies)."""
    g = torch.Generator().manual_seed(3)
    Bt, T, H, D = 2, 23, 3, 16
    qkv = codes((Bt, T, 3, H, D), torch.int8, g)
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))  # [B, H, T, D], not contiguous
    scores = check_all_paths("int8_bmm", (q, k, 0.05, 0, 0.05, 0, 0.1, 0, torch.int8, True, "float"))
    assert scores.shape == (Bt, H, T, T)
    attn = codes((Bt, H, T, T), torch.uint8, g)
    out = check_all_paths("int8_bmm", (attn, v, 1 / 255, 0, 0.05, 0, 0.02, 0, torch.int8, False, "fixed"))
    assert out.shape == (Bt, H, T, D)


@st.composite
def bmm_problems(draw):
    B = draw(st.integers(0, 3))
    M, N, K = draw(st.integers(0, 20)), draw(st.integers(0, 70)), draw(st.integers(0, 80))
    a_dtype = draw(st.sampled_from([torch.uint8, torch.int8]))
    transpose_b = draw(st.booleans())
    out_dtype = draw(st.sampled_from(OUT_DTYPES))
    requant = draw(st.sampled_from(["float", "fixed"]))
    lo, hi = QRANGE[a_dtype]
    za = draw(st.integers(lo, hi))
    zb = draw(st.integers(-128, 127))
    sa, sb, so = (draw(st.floats(1e-4, 1.0)) for _ in range(3))
    zo = draw(st.integers(*QRANGE[out_dtype])) if out_dtype in QRANGE else 0
    if out_dtype not in QRANGE:
        so = 1.0
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    a = codes((B, M, K), a_dtype, g)
    b = codes((B, N, K) if transpose_b else (B, K, N), torch.int8, g)
    return (a, b, sa, za, sb, zb, so, zo, out_dtype, transpose_b, requant)


@needs_native
@HYP
@given(bmm_problems())
def test_bmm_random_problems_all_paths(args):
    check_all_paths("int8_bmm", args)


@needs_native
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_bmm_thread_count_does_not_change_results(batch):
    """1 vs 2 threads (batch 1 and 3 split columns between threads, batch 4 splits the batch)."""
    g = torch.Generator().manual_seed(4)
    a = codes((batch, 197, 64), torch.uint8, g)
    b = codes((batch, 197, 64), torch.int8, g)
    check_all_paths("int8_bmm", (a, b, 0.02, 128, 0.01, 0, 0.3, 5, torch.uint8, True, "float"), threads=(1, 2))
    v = codes((batch, 197, 64), torch.int8, g)
    attn = codes((batch, 197, 197), torch.uint8, g)
    check_all_paths("int8_bmm", (attn, v, 1 / 255, 0, 0.02, 0, 0.05, 0, torch.int8, False, "fixed"), threads=(1, 2))


# ----------------------------------------------------------------------------------------------
# int8_linear against the reference


@needs_native
@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1), (5, 3, 7), (197, 63, 49), (2, 65, 130), (0, 4, 4), (3, 0, 5), (4, 9, 0)],
    ids=lambda s: "x".join(map(str, s)),
)
@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8])
def test_linear_edge_shapes_all_paths(shape, x_dtype):
    M, N, K = shape
    g = torch.Generator().manual_seed(hash((shape, str(x_dtype))) % 2**31)
    x = codes((M, K), x_dtype, g)
    w = codes((N, K), torch.int8, g)
    lo, hi = QRANGE[x_dtype]
    ws_pc = torch.rand(N, generator=g) * 0.02 + 1e-3
    ws_pt = torch.tensor(0.013)
    bias_i = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g)
    bias_f = torch.randn(N, generator=g)
    for i, out_dtype in enumerate(OUT_DTYPES):
        so, zo = out_qparams(out_dtype, scale=0.1 + 0.05 * i)
        for ws in (ws_pc, ws_pt):
            for relu in (False, True):
                for bias, requant in ((None, "fixed"), (bias_i, "fixed"), (bias_i, "float"), (bias_f, "float")):
                    if bias is bias_f and out_dtype == torch.int32:
                        continue
                    zx = [lo, hi, 7][i % 3]
                    check_all_paths("int8_linear", (x, w, ws, bias, 0.03, zx, so, zo, out_dtype, relu, requant))


@needs_native
@pytest.mark.parametrize("out_scale", [1.001, 1.0], ids=["no-overflow-path", "clamping-path"])
def test_linear_accumulators_at_int32_limits(out_scale):
    """The largest accumulators the float requantization sees, on both SIMD finishers.

    With multipliers clearly below 1 the SIMD paths skip the float clamp (Epilogue::no_overflow)
    and saturate while narrowing; at 1 they must clamp in float first.
    """
    # int32 bias: acc = INT32_MAX, INT32_MIN, 200 exactly
    x = torch.tensor([[255], [0], [200]], dtype=torch.uint8)
    w = torch.tensor([[127], [-128], [1]], dtype=torch.int8)
    acc = 255 * torch.tensor([127, -128, 1])  # first row, zero point 0
    bias = (torch.tensor([2**31 - 1, -(2**31), 0], dtype=torch.int64) - acc).to(torch.int32)
    ws = torch.ones(3)
    # float bias on top of accumulators of 2.13e9 and -(2^31 - 128)
    K = 65793
    x_big = torch.full((2, K), 255, dtype=torch.uint8)
    w_big = torch.stack([torch.full((K,), 127, dtype=torch.int8), torch.full((K,), -128, dtype=torch.int8)])
    fbias = torch.tensor([3.5, -3.5])
    for out_dtype in (torch.uint8, torch.int8):
        lo, hi = QRANGE[out_dtype]
        for zo in (lo, hi):
            for relu in (False, True):
                out = check_all_paths("int8_linear", (x, w, ws, bias, 1.0, 0, out_scale, zo, out_dtype, relu, "float"))
                assert int(out[0, 0]) == hi and int(out[0, 1]) == (max(lo, zo) if relu else lo)
                out = check_all_paths(
                    "int8_linear", (x_big, w_big, torch.ones(2), fbias, 1.0, 0, out_scale, zo, out_dtype, relu, "float")
                )
                assert int(out[0, 0]) == hi and int(out[0, 1]) == (max(lo, zo) if relu else lo)


@needs_native
def test_linear_leading_dims_and_strided_input():
    g = torch.Generator().manual_seed(5)
    x = codes((2, 3, 40, 2 * 33), torch.uint8, g)[..., ::2]  # [2, 3, 40, 33], column stride 2
    w = codes((66, 33), torch.int8, g)
    ws = torch.rand(66, generator=g) * 0.01 + 1e-3
    out = check_all_paths("int8_linear", (x, w, ws, None, 0.02, 100, 0.2, 3, torch.uint8, True, "float"))
    assert out.shape == (2, 3, 40, 66)
    w_t = codes((33, 66), torch.int8, g).t()  # a transposed weight view
    check_all_paths("int8_linear", (x[0, 0], w_t, ws, None, 0.02, 100, 0.2, 3, torch.int8, False, "fixed"))


@needs_native
def test_linear_thread_count_does_not_change_results():
    g = torch.Generator().manual_seed(6)
    # a column split; two row blocks; a weight too big to keep packed (one B panel at a time)
    for M, N, K in ((197, 300, 96), (1000, 70, 600), (37, 610, 501)):
        x = codes((M, K), torch.uint8, g)
        w = codes((N, K), torch.int8, g)
        ws = torch.rand(N, generator=g) * 0.01 + 1e-3
        bias = torch.randn(N, generator=g)
        check_all_paths(
            "int8_linear", (x, w, ws, bias, 0.02, 128, 0.3, 64, torch.uint8, False, "float"), threads=(1, 2)
        )


# ----------------------------------------------------------------------------------------------
# Bit-exact with PyTorch's own quantized Linear (fbgemm on the x86 engine)


def _torch_linear(qx, qw, bias, so, zo, relu):
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    n, k = qw.shape
    lin = (nniq.LinearReLU if relu else nnq.Linear)(k, n)
    lin.set_weight_bias(qw, bias)
    lin.scale, lin.zero_point = so, zo
    return lin(qx).int_repr()


@pytest.fixture
def x86_engine():
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("PyTorch was built without the x86 quantized engine")
    with warnings.catch_warnings(), qlab.scoped(engine="x86"):
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*are deprecated")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*is deprecated")
        yield


def _quantized_problem(seed, M, K, N, per_channel, x_range=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * x_range
    w = torch.randn(N, K, generator=g) * 0.2
    bias = torch.randn(N, generator=g) * 2
    sx = float(torch.rand(1, generator=g) * 0.05 + 0.005)
    zx = int(torch.randint(0, 256, (1,), generator=g))
    so = float(torch.rand(1, generator=g) * 0.5 + 0.02)
    zo = int(torch.randint(0, 256, (1,), generator=g))
    qx = fbgemm_safe(torch.quantize_per_tensor(x, sx, zx, torch.quint8))  # 7-bit codes where FBGEMM saturates
    if per_channel:
        scales = (w.abs().amax(1) / 127).double().clamp(min=1e-4)
        qw = torch.quantize_per_channel(w, scales, torch.zeros(N, dtype=torch.long), 0, torch.qint8)
        wscale = qw.q_per_channel_scales()  # float64, as PyTorch stores them
    else:
        qw = torch.quantize_per_tensor(w, float(w.abs().max() / 127), 0, torch.qint8)
        wscale = torch.tensor(qw.q_scale())
    return qx, qw, wscale, bias, so, zo


@HYP
@given(
    seed=st.integers(0, 2**31 - 1),
    M=st.integers(1, 40),
    K=st.integers(1, 130),
    N=st.integers(1, 70),
    per_channel=st.booleans(),
    relu=st.booleans(),
    with_bias=st.booleans(),
)
def test_linear_float_mode_equals_torch_ao_quantized_linear(x86_engine, seed, M, K, N, per_channel, relu, with_bias):
    qx, qw, wscale, bias, so, zo = _quantized_problem(seed, M, K, N, per_channel)
    bias = bias if with_bias else None
    want = _torch_linear(qx, qw, bias, so, zo, relu)
    for name in PATHS:  # "reference" when the extension is not built: the reference must match too
        if name != "reference":
            qk.set_isa(name)
        got = qk.int8_linear(
            qx.int_repr(),
            qw.int_repr(),
            wscale,
            bias,
            x_scale=qx.q_scale(),
            x_zero_point=qx.q_zero_point(),
            out_scale=so,
            out_zero_point=zo,
            relu=relu,
        )
        assert torch.equal(got, want), name
    ref = R.int8_linear(
        qx.int_repr(),
        qw.int_repr(),
        wscale.float(),
        bias,
        qx.q_scale(),
        qx.q_zero_point(),
        so,
        zo,
        torch.uint8,
        relu,
        "float",
    )
    assert torch.equal(ref, want)


def _bias_rounding_witness():
    """Scales, a bias and an accumulator for which fbgemm's two ways of adding a float bias disagree.

    fbgemm adds ``bias / ats`` (per-channel) or ``bias * float(1/ats)`` (per-tensor), ats = float32(sx*sw).
    Returns ``(sx, sw, so, bias, acc)`` where the requantized result depends on which one is used,
    so the test below fails if qlab picks the wrong formula.
    """
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    g = torch.Generator().manual_seed(7)
    for _ in range(20000):
        sx = float(f32(float(torch.rand(1, generator=g)) * 0.05 + 0.01))
        sw = float(f32(float(torch.rand(1, generator=g)) * 0.01 + 0.001))
        b = float(f32(float(torch.randn(1, generator=g)) * 3))
        ats = f32(sx) * f32(sw)
        t_div, t_rcp = f32(b) / ats, f32(b) * f32(1.0 / float(ats))
        if float(t_div) == float(t_rcp):
            continue
        t_mid = (float(t_div) + float(t_rcp)) / 2
        for acc in range(max(1, math.ceil(-t_mid) + 1), 256):  # x = acc as a uint8 code, (acc + t) > 0
            half = math.floor((acc + t_mid) * 0.3) + 0.5  # aim (acc + t) * multiplier at a rounding tie
            so = float(f32(float(ats) * (acc + t_mid) / half))
            mult = ats / f32(so)
            r_div = torch.round((f32(acc) + t_div) * mult)
            r_rcp = torch.round((f32(acc) + t_rcp) * mult)
            if (
                float(r_div) != float(r_rcp)
                and 0 <= min(float(r_div), float(r_rcp))
                and max(float(r_div), float(r_rcp)) <= 255
            ):
                return sx, sw, so, b, acc
    raise AssertionError("no witness found")


@pytest.mark.parametrize("per_channel", [True, False])
def test_linear_float_bias_rounds_like_fbgemm(x86_engine, per_channel):
    """A case where ``bias / ats`` and ``bias * (1/ats)`` give different codes: qlab must agree with PyTorch."""
    sx, sw, so, b, acc = _bias_rounding_witness()
    x = torch.tensor([[acc]], dtype=torch.uint8)  # K = 1, weight 1, zero points 0: the accumulator is acc
    w = torch.ones(1, 1, dtype=torch.int8)
    qx = torch._make_per_tensor_quantized_tensor(x, sx, 0)
    if per_channel:
        qw = torch._make_per_channel_quantized_tensor(
            w, torch.tensor([sw], dtype=torch.float64), torch.zeros(1, dtype=torch.long), 0
        )
        wscale = torch.tensor([sw], dtype=torch.float32)
    else:
        qw = torch._make_per_tensor_quantized_tensor(w, sw, 0)
        wscale = torch.tensor(sw, dtype=torch.float32)
    bias = torch.tensor([b], dtype=torch.float32)
    want = _torch_linear(qx, qw, bias, so, 0, False)
    for name in PATHS:
        if name != "reference":
            qk.set_isa(name)
        got = qk.int8_linear(x, w, wscale, bias, x_scale=sx, x_zero_point=0, out_scale=so, out_zero_point=0)
        assert torch.equal(got, want), name
    # and the other formula would have failed this test:
    ats = torch.tensor(sx, dtype=torch.float32) * torch.tensor(sw, dtype=torch.float32)
    other = bias * torch.tensor(1.0 / float(ats)) if per_channel else bias / ats
    mult = ats / torch.tensor(so, dtype=torch.float32)
    wrong = (torch.round((torch.tensor(float(acc)) + other) * mult)).clamp(0, 255).to(torch.uint8)
    assert not torch.equal(wrong.reshape(1, 1), want)


# ----------------------------------------------------------------------------------------------
# Fixed-point requantization: the reference is gemmlowp/TFLite, and C++ computes the same multipliers


def _srdhm_gemmlowp(a: int, b: int) -> int:
    if a == b == -(2**31):
        return 2**31 - 1
    ab = a * b
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    v = ab + nudge
    return -((-v) // 2**31) if v < 0 else v // 2**31  # C++ division truncates toward zero


@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_srdhm_matches_gemmlowp(a, b):
    got = RQ.saturating_rounding_doubling_high_mul(torch.tensor([a]), torch.tensor([b]))
    assert int(got) == _srdhm_gemmlowp(a, b)


def test_srdhm_known_values():
    f = lambda a, b: int(RQ.saturating_rounding_doubling_high_mul(torch.tensor([a]), torch.tensor([b])))  # noqa: E731
    assert f(2**30, 2**30) == 2**29  # 0.5 * 0.5 = 0.25 of 2^31
    assert f(1, 2**30) == 1  # +0.5 rounds up
    assert f(-1, 2**30) == 0  # -0.5 rounds up too (gemmlowp's nudge)
    assert f(-(2**31), -(2**31)) == 2**31 - 1  # the one overflow saturates


@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 31))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rounding_divide_by_pot_rounds_half_away_from_zero(x, e):
    got = int(RQ.rounding_divide_by_pot(torch.tensor([x]), torch.tensor([e])))
    q = Fraction(x, 2**e)
    want = math.floor(abs(q) + Fraction(1, 2)) * (1 if q >= 0 else -1)
    assert got == want


@given(st.floats(1e-12, 1e12) | st.sampled_from([0.0, 1.0, 0.5, 2.0**-32, 2.0**-33, 1 - 2.0**-33, 2.0**30, 0.75]))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_quantize_multiplier(m):
    qmul, shift = RQ.quantize_multiplier(m)
    if m < 2.0**-32:  # includes 0: the product is 0
        assert (qmul, shift) == (0, 0)
    elif m >= 2.0**30:  # saturates
        assert (qmul, shift) == (2**31 - 1, 30)
    else:
        assert 2**30 <= qmul < 2**31
        assert abs(qmul * 2.0 ** (shift - 31) - m) <= m * 2.0**-31  # 31-bit precision
    if NATIVE:
        assert tuple(torch.ops.qlab._quantize_multiplier(m)) == (qmul, shift)


@given(st.integers(-(2**31), 2**31 - 1), st.floats(2.0**-20, 0.99))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fixed_requant_is_round_of_exact_product(acc, m):
    """The integer pipeline equals round(acc * qmul * 2^(shift-31)) up to the two roundings (at most 1 off)."""
    qmul, shift = RQ.quantize_multiplier(m)
    got = int(RQ.multiply_by_quantized_multiplier(torch.tensor([acc]), torch.tensor([qmul]), torch.tensor([shift])))
    exact = Fraction(acc) * qmul * Fraction(2) ** (shift - 31)
    assert abs(got - exact) <= 1


# ----------------------------------------------------------------------------------------------
# Custom-op machinery: schemas, opcheck, torch.compile, torch.export


@needs_native
def test_cpp_schemas_equal_the_fallback_copies():
    for name, schema in _ops.SCHEMAS.items():
        assert str(getattr(torch.ops.qlab, name).default._schema) == "qlab::" + schema


def _opcheck_samples():
    g = torch.Generator().manual_seed(8)
    a = codes((2, 5, 13), torch.uint8, g)
    a8 = codes((2, 5, 13), torch.int8, g)
    b = codes((2, 7, 13), torch.int8, g)
    x = codes((3, 4, 13), torch.uint8, g)
    w = codes((6, 13), torch.int8, g)
    ws = torch.rand(6, generator=g) * 0.01 + 1e-3
    return [
        (torch.ops.qlab.int8_bmm.default, (a, b, 0.02, 128, 0.01, 0, 0.1, 3, torch.uint8, True, "float")),
        (
            torch.ops.qlab.int8_bmm.default,
            (a8, b.transpose(-1, -2), 0.02, -5, 0.01, 2, 0.1, -3, torch.int8, False, "fixed"),
        ),
        (torch.ops.qlab.int8_bmm.default, (a, b, 0.02, 1, 0.01, 0, 1.0, 0, torch.float32, True, "float")),
        (
            torch.ops.qlab.int8_linear.default,
            (x, w, ws, torch.randn(6, generator=g), 0.02, 128, 0.1, 0, torch.uint8, True, "float"),
        ),
        (
            torch.ops.qlab.int8_linear.default,
            (x, w, ws[0], torch.arange(6, dtype=torch.int32), 0.02, 128, 0.1, 0, torch.int8, False, "fixed"),
        ),
        (torch.ops.qlab.int8_linear.default, (x, w, ws, None, 0.02, 128, 1.0, 0, torch.int32, False, "float")),
        (torch.ops.qlab.quantize_per_tensor.default, (torch.randn(3, 5, 7, generator=g), 0.05, 128, torch.uint8)),
        (torch.ops.qlab.quantize_per_tensor.default, (torch.randn(4, 9, generator=g).mT, 0.02, -3, torch.int8)),
    ]


@pytest.mark.parametrize("i", range(8))
def test_opcheck(i):
    op, args = _opcheck_samples()[i]
    torch.library.opcheck(op, args)


def _attention_int8(q, k, v):
    """A toy int8 attention: q·kᵀ dequantized, softmax in float, attn requantized to uint8, attn·v."""
    scores = qk.int8_bmm(q, k, a_scale=0.05, a_zero_point=128, b_scale=0.04, transpose_b=True, out_dtype=torch.float32)
    attn = torch.softmax(scores, dim=-1)
    attn_q = torch.clamp(torch.round(attn * 255), 0, 255).to(torch.uint8)
    return qk.int8_bmm(
        attn_q,
        v,
        a_scale=1 / 255,
        a_zero_point=0,
        b_scale=0.03,
        out_scale=0.02,
        out_zero_point=0,
        out_dtype=torch.int8,
        requant="fixed",
    )


def _linear_relu(x, w, ws, bias):
    return qk.int8_linear(x, w, ws, bias, x_scale=0.02, x_zero_point=128, out_scale=0.1, out_zero_point=10, relu=True)


def _inputs(seed=9, T=17):
    g = torch.Generator().manual_seed(seed)
    q = codes((2, 3, T, 16), torch.uint8, g)
    k = codes((2, 3, T, 16), torch.int8, g)
    v = codes((2, 3, T, 16), torch.int8, g)
    x = codes((2, T, 24), torch.uint8, g)
    w = codes((40, 24), torch.int8, g)
    ws = torch.rand(40, generator=g) * 0.01 + 1e-3
    bias = torch.randn(40, generator=g)
    return q, k, v, x, w, ws, bias


def test_ops_inside_torch_compile():
    torch._dynamo.reset()
    # Inductor generates C++ for the float ops around ours; without a compiler, check the graph capture only.
    backend = "inductor" if shutil.which(os.environ.get("CXX", "c++")) else "aot_eager"
    q, k, v, x, w, ws, bias = _inputs()
    for fn, args in ((_attention_int8, (q, k, v)), (_linear_relu, (x, w, ws, bias))):
        compiled = torch.compile(fn, fullgraph=True, backend=backend)  # fullgraph: no graph break around our ops
        assert torch.equal(compiled(*args), fn(*args))


def test_ops_under_torch_export():
    class Block(torch.nn.Module):
        def forward(self, q, k, v, x, w, ws, bias):
            return _attention_int8(q, k, v), _linear_relu(x, w, ws, bias)

    args = _inputs()
    tokens = torch.export.Dim("tokens", min=2, max=512)
    dyn = ({2: tokens}, {2: tokens}, {2: tokens}, {1: tokens}, None, None, None)
    ep = torch.export.export(Block(), args, dynamic_shapes=dyn)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.qlab.int8_bmm.default) == 2
    assert targets.count(torch.ops.qlab.int8_linear.default) == 1
    for T in (17, 30):  # the exported program runs at another sequence length too
        args = _inputs(seed=T, T=T)
        for got, want in zip(ep.module()(*args), Block()(*args), strict=True):
            assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------
# ISA control


@needs_native
def test_isa_control():
    assert PATHS[0] == "scalar" and set(PATHS) <= {"scalar", "avx2", "avx_vnni", "avx512_vnni", "amx"}
    best = PATHS[-1]
    qk.set_isa("auto")
    assert qk.isa() == best
    for name in PATHS:
        with qk.use_isa(name):
            assert qk.isa() == name
        assert qk.isa() == best
    allowed = r"\['auto', 'scalar', 'avx2', 'avx_vnni', 'avx512_vnni', 'amx', 'reference'\]"
    with pytest.raises(ValueError, match=r"name must be one of " + allowed):
        qk.set_isa("avx1024")
    with pytest.raises(ValueError, match="isa must be one of"):
        torch.ops.qlab._set_isa("avx1024")
    with pytest.raises(ValueError, match="'reference'"):
        qk.set_isa("reference")


# ----------------------------------------------------------------------------------------------
# Errors name the argument and what is allowed


def _bmm_kw(**over):
    g = torch.Generator().manual_seed(10)
    kw = dict(
        a=codes((2, 3, 8), torch.uint8, g),
        b=codes((2, 5, 8), torch.int8, g),
        a_scale=0.1,
        a_zero_point=0,
        b_scale=0.1,
        b_zero_point=0,
        out_scale=0.5,
        out_zero_point=0,
        out_dtype=torch.uint8,
        transpose_b=True,
        requant="float",
    )
    kw.update(over)
    return kw


def _bmm(**over):
    kw = _bmm_kw(**over)
    return qk.int8_bmm(kw.pop("a"), kw.pop("b"), **kw)


BMM_ERRORS = [
    (dict(a=torch.zeros(2, 3, 8)), TypeError, r"a must have dtype torch.uint8 or torch.int8, got torch.float32"),
    (dict(b=torch.zeros(2, 5, 8, dtype=torch.uint8)), TypeError, r"b must have dtype torch.int8, got torch.uint8"),
    (dict(a=[[1]]), TypeError, r"a must be a torch.Tensor"),
    (
        dict(b=torch.zeros(2, 5, 9, dtype=torch.int8)),
        ValueError,
        r"b must have shape \[\.\.\., N, K\] with K = a.shape\[-1\] = 8",
    ),
    (dict(b=torch.zeros(2, 8, 5, dtype=torch.int8)), ValueError, r"with K = a.shape\[-1\] = 8 \(transpose_b=True\)"),
    (dict(b=torch.zeros(3, 5, 8, dtype=torch.int8)), ValueError, r"same batch dimensions"),
    (dict(b=torch.zeros(5, 8, dtype=torch.int8)), ValueError, r"b must have as many dimensions as a"),
    (dict(a=torch.zeros(8, dtype=torch.uint8)), ValueError, r"a must have at least 2 dimensions"),
    (dict(a_scale=0.0), ValueError, r"a_scale must be a positive finite float \(representable in float32\), got 0"),
    (dict(b_scale=-1.0), ValueError, r"b_scale must be a positive finite float"),
    (dict(a_scale=float("nan")), ValueError, r"a_scale must be a positive finite float .*, got nan"),
    (dict(a_scale=1e-50), ValueError, r"a_scale must be a positive finite float \(representable in float32\)"),
    (dict(a_scale="0.1"), TypeError, r"a_scale must be a float"),
    (dict(a_zero_point=256), ValueError, r"a_zero_point must lie in \[0, 255\] for torch.uint8, got 256"),
    (dict(a_zero_point=1.0), TypeError, r"a_zero_point must be an int"),
    (dict(b_zero_point=128), ValueError, r"b_zero_point must lie in \[-128, 127\]"),
    (dict(out_zero_point=-1), ValueError, r"out_zero_point must lie in \[0, 255\]"),
    (dict(out_dtype=torch.int8, out_zero_point=200), ValueError, r"out_zero_point must lie in \[-128, 127\]"),
    (
        dict(out_dtype=torch.float16),
        ValueError,
        r"out_dtype must be one of \[torch.uint8, torch.int8, torch.int32, torch.float32\]",
    ),
    (dict(out_scale=None), ValueError, r"out_scale is required for out_dtype torch.uint8"),
    (
        dict(out_dtype=torch.int32),
        ValueError,
        r"out_scale and out_zero_point apply to out_dtype torch.uint8 / torch.int8 only",
    ),
    (dict(requant="round"), ValueError, r"requant must be one of \['float', 'fixed'\], got 'round'"),
    (dict(transpose_b=1), TypeError, r"transpose_b must be a bool"),
]


@pytest.mark.parametrize("over,exc,msg", BMM_ERRORS, ids=[m[:40] for _, _, m in BMM_ERRORS])
def test_bmm_errors(over, exc, msg):
    with pytest.raises(exc, match=msg):
        _bmm(**over)


# The C++ op checks on its own (torch.ops.qlab.* called directly, no wrapper).
RAW_BMM_ERRORS = [
    (dict(a=torch.zeros(2, 3, 8)), TypeError, r"a must have dtype torch.uint8 or torch.int8, got torch.float32"),
    (dict(b=torch.zeros(2, 5, 8, dtype=torch.uint8)), TypeError, r"b must have dtype torch.int8"),
    (dict(b=torch.zeros(2, 5, 9, dtype=torch.int8)), ValueError, r"K = a.shape\[-1\] = 8"),
    (dict(a_scale=0.0), ValueError, r"a_scale must be"),
    (dict(a_zero_point=300), ValueError, r"a_zero_point must lie in \[0, 255\]"),
    (dict(out_dtype=torch.float16), ValueError, r"out_dtype must be one of"),
    (dict(requant="round"), ValueError, r"requant must be one of \['float', 'fixed'\]"),
    (
        dict(a_scale=1e-20, b_scale=1e-20, out_scale=1e30),
        ValueError,
        r"requantization multiplier .* is not a positive finite float32",
    ),
    (dict(a_scale=1e-30, b_scale=1e-30), ValueError, r"a_scale \* b_scale = 0(\.0)? is not a positive finite float32"),
]


@pytest.mark.parametrize("over,exc,msg", RAW_BMM_ERRORS, ids=[m[:40] for _, _, m in RAW_BMM_ERRORS])
def test_bmm_op_errors_without_wrapper(over, exc, msg):
    kw = _bmm_kw(**over)
    with pytest.raises(exc, match=msg):
        torch.ops.qlab.int8_bmm(*kw.values())


def _linear_kw(**over):
    g = torch.Generator().manual_seed(11)
    kw = dict(
        x=codes((3, 8), torch.uint8, g),
        weight=codes((5, 8), torch.int8, g),
        weight_scale=torch.full((5,), 0.01),
        bias=None,
        x_scale=0.1,
        x_zero_point=0,
        out_scale=0.5,
        out_zero_point=0,
        out_dtype=torch.uint8,
        relu=False,
        requant="float",
    )
    kw.update(over)
    return kw


LINEAR_ERRORS = [
    (
        dict(x=torch.zeros(3, 8, dtype=torch.int32)),
        TypeError,
        r"x must have dtype torch.uint8 or torch.int8, got torch.int32",
    ),
    (dict(weight=torch.zeros(5, 8, dtype=torch.uint8)), TypeError, r"weight must have dtype torch.int8"),
    (
        dict(weight=torch.zeros(5, 8, 1, dtype=torch.int8)),
        ValueError,
        r"weight must have shape \[out_features, in_features\]",
    ),
    (dict(x=torch.zeros(3, 7, dtype=torch.uint8)), ValueError, r"in_features = weight.shape\[1\] = 8"),
    (
        dict(weight_scale=torch.full((4,), 0.01)),
        ValueError,
        r"weight_scale must be a 0-d tensor \(per-tensor\) or have shape \[out_features\] = \[5\]",
    ),
    (
        dict(weight_scale=torch.full((5,), 0.01, dtype=torch.float16)),
        TypeError,
        r"weight_scale must have dtype torch.float32",
    ),
    (
        dict(weight_scale=torch.tensor([0.01, 0.01, -1.0, 0.01, 0.01])),
        ValueError,
        r"weight_scale must be positive and finite",
    ),
    (dict(weight_scale=-0.5), ValueError, r"weight_scale must be positive and finite"),
    (dict(bias=torch.zeros(5, dtype=torch.int64)), TypeError, r"bias must have dtype torch.int32 or torch.float32"),
    (dict(bias=torch.zeros(6, dtype=torch.int32)), ValueError, r"bias must have shape \[out_features\] = \[5\]"),
    (dict(bias=torch.zeros(5), requant="fixed"), ValueError, r"float32 bias .* needs requant='float'"),
    (dict(bias=torch.tensor([0.0, 1.0, float("inf"), 0.0, 0.0])), ValueError, r"bias must be finite"),
    (dict(x_zero_point=-1), ValueError, r"x_zero_point must lie in \[0, 255\]"),
    (
        dict(x=torch.zeros(3, 8, dtype=torch.int8), x_zero_point=200),
        ValueError,
        r"x_zero_point must lie in \[-128, 127\]",
    ),
    (dict(x_scale=float("inf")), ValueError, r"x_scale must be a positive finite float"),
    (dict(relu=None), TypeError, r"relu must be a bool"),
    (dict(out_dtype=torch.int64), ValueError, r"out_dtype must be one of"),
]


@pytest.mark.parametrize("over,exc,msg", LINEAR_ERRORS, ids=[m[:40] for _, _, m in LINEAR_ERRORS])
def test_linear_errors(over, exc, msg):
    kw = _linear_kw(**over)
    with pytest.raises(exc, match=msg):
        qk.int8_linear(kw.pop("x"), kw.pop("weight"), kw.pop("weight_scale"), kw.pop("bias"), **kw)


RAW_LINEAR_ERRORS = [
    (
        dict(x=torch.zeros(3, 8, dtype=torch.int32)),
        TypeError,
        r"x must have dtype torch.uint8 or torch.int8, got torch.int32",
    ),
    (dict(weight=torch.zeros(5, 8, dtype=torch.uint8)), TypeError, r"weight must have dtype torch.int8"),
    (
        dict(weight=torch.zeros(5, 8, 1, dtype=torch.int8)),
        ValueError,
        r"weight must have shape \[out_features, in_features\]",
    ),
    (dict(x=torch.zeros(3, 7, dtype=torch.uint8)), ValueError, r"in_features = weight.shape\[1\] = 8"),
    (
        dict(weight_scale=torch.full((4,), 0.01)),
        ValueError,
        r"weight_scale must be a 0-d tensor \(per-tensor\) or have shape",
    ),
    (
        dict(weight_scale=torch.full((5,), 0.01, dtype=torch.float64)),
        TypeError,
        r"weight_scale must have dtype torch.float32, got torch.float64",
    ),
    (
        dict(weight_scale=torch.tensor([0.01, 0.01, -1.0, 0.01, 0.01])),
        ValueError,
        r"weight_scale must be positive and finite",
    ),
    (
        dict(bias=torch.zeros(5, dtype=torch.int64)),
        TypeError,
        r"bias must have dtype torch.int32 or torch.float32, got torch.int64",
    ),
    (dict(bias=torch.zeros(6, dtype=torch.int32)), ValueError, r"bias must have shape \[out_features\] = \[5\]"),
    (dict(bias=torch.zeros(5), requant="fixed"), ValueError, r"float32 bias .* needs requant='float'"),
    (dict(bias=torch.tensor([0.0, 1.0, float("inf"), 0.0, 0.0])), ValueError, r"bias must be finite"),
    (dict(x_zero_point=-1), ValueError, r"x_zero_point must lie in \[0, 255\]"),
    (dict(x_scale=float("inf")), ValueError, r"x_scale must be a positive finite float"),
    (dict(out_dtype=torch.int64), ValueError, r"out_dtype must be one of \[.*\], got torch.int64"),
]


@needs_native
@pytest.mark.parametrize("over,exc,msg", RAW_LINEAR_ERRORS, ids=[m[:40] for _, _, m in RAW_LINEAR_ERRORS])
def test_linear_op_errors_without_wrapper(over, exc, msg):
    kw = _linear_kw(**over)
    with pytest.raises(exc, match=msg):
        torch.ops.qlab.int8_linear(*kw.values())


# ----------------------------------------------------------------------------------------------
# quantize_per_tensor: float32 -> codes, against PyTorch's (deprecated) quantize_per_tensor


def _torch_codes(x, scale, zp, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(x, scale, zp, torch.quint8 if dtype == torch.uint8 else torch.qint8)
    return q.int_repr()


@HYP
@given(
    data=st.data(),
    dtype=st.sampled_from([torch.uint8, torch.int8]),
    n=st.integers(0, 300),
    log_scale=st.floats(-12, 8),
    spread=st.floats(-6, 12),
)
def test_quantize_per_tensor_equals_torch_on_every_path(data, dtype, n, log_scale, spread):
    lo, hi = QRANGE[dtype]
    scale = float(torch.tensor(2.0**log_scale, dtype=torch.float32))
    zp = data.draw(st.integers(lo, hi))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    x = torch.randn(n, generator=g) * 2.0**spread
    ties = (torch.randint(-300, 300, (n,), generator=g).float() + 0.5) * scale  # x / scale exactly half-way
    x = torch.where(torch.rand(n, generator=g) < 0.3, ties, x)
    want = check_all_paths("quantize_per_tensor", (x, scale, zp, dtype))
    assert torch.equal(want, _torch_codes(x, scale, zp, dtype))


def test_quantize_per_tensor_special_values_and_layouts():
    x = torch.tensor([0.0, -0.0, 1e30, -1e30, float("inf"), float("-inf"), 2.5, 3.5, -2.5, 1e-45] * 7)
    for dtype in (torch.uint8, torch.int8):
        check_all_paths("quantize_per_tensor", (x, 1.0, 3, dtype))
        assert torch.equal(qk.quantize_per_tensor(x, 1.0, 3, dtype), _torch_codes(x, 1.0, 3, dtype))
        nan = torch.full((37,), float("nan"))
        assert torch.equal(
            check_all_paths("quantize_per_tensor", (nan, 0.1, 5, dtype)),
            torch.full((37,), QRANGE[dtype][0], dtype=dtype),
        )  # NaN -> qmin, on every path
    base = torch.randn(6, 40, generator=torch.Generator().manual_seed(3))
    for view in (base.mT, base[:, ::3], base.unsqueeze(0).expand(2, 6, 40), torch.empty(0, 4)):
        got = qk.quantize_per_tensor(view, 0.03, 128)
        assert got.shape == view.shape and got.is_contiguous()
        assert torch.equal(got, _torch_codes(view.contiguous(), 0.03, 128, torch.uint8))


@pytest.mark.parametrize(
    "over, exc, msg",
    [
        ({"x": torch.zeros(3, dtype=torch.float64)}, TypeError, "x must have dtype torch.float32"),
        ({"x": [1.0, 2.0]}, TypeError, "x must be a torch.Tensor"),
        ({"dtype": torch.int32}, ValueError, "dtype must be one of"),
        ({"scale": 0.0}, ValueError, "scale must be"),
        ({"scale": 1e-50}, ValueError, "scale must be a positive finite float"),
        ({"zero_point": 256}, ValueError, "zero_point must"),
        ({"zero_point": -1}, ValueError, "zero_point must"),
    ],
)
def test_quantize_per_tensor_errors(over, exc, msg):
    args = {"x": torch.zeros(3), "scale": 0.1, "zero_point": 0, "dtype": torch.uint8} | over
    with pytest.raises(exc, match=msg):
        qk.quantize_per_tensor(**args)


@needs_native
def test_quantize_per_tensor_op_errors_without_wrapper():
    with pytest.raises(TypeError, match="x must have dtype torch.float32"):
        torch.ops.qlab.quantize_per_tensor(torch.zeros(3, dtype=torch.float16), 0.1, 0, torch.uint8)
    with pytest.raises(ValueError, match=r"dtype must be one of \[torch.uint8, torch.int8\]"):
        torch.ops.qlab.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.int32)
    with pytest.raises(ValueError, match="zero_point must lie in"):
        torch.ops.qlab.quantize_per_tensor(torch.zeros(3), 0.1, 200, torch.int8)


def test_meta_tensors_take_the_fake_kernel():
    """Shapes and dtypes only, no data: what torch.compile and torch.export trace with."""
    a = torch.empty(2, 3, 8, dtype=torch.uint8, device="meta")
    b = torch.empty(2, 5, 8, dtype=torch.int8, device="meta")
    out = qk.int8_bmm(a, b, a_scale=0.1, a_zero_point=0, b_scale=0.1, out_dtype=torch.float32, transpose_b=True)
    assert out.device.type == "meta" and out.shape == (2, 3, 5) and out.dtype == torch.float32
