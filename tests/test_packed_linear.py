"""The prepacked int8 linear (issue 15): ``pack_linear_weight`` + ``int8_linear_packed``.

* the C++ packing equals :func:`qlab.kernels.reference.pack_linear_weight` byte for byte, and unpacks to the weight;
* ``int8_linear_packed`` equals ``int8_linear`` on the unpacked weight (and the GELU ``table`` equals a lookup on its
  codes) on every path, at 1 and 2 threads, on edge shapes and on random problems (hypothesis);
* opcheck, ``torch.compile`` and ``torch.export``; bad arguments are named.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlab.kernels as qk
from qlab import int8_mlp
from qlab.kernels import reference as R

PATHS = qk.available_isas()
QRANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}
SHAPES = [(1, 1, 1), (5, 3, 7), (9, 4, 16), (7, 65, 97), (33, 100, 50), (3, 64, 48), (2, 129, 49), (197, 384, 200)]


@pytest.fixture(autouse=True)
def _restore_isa_and_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    qk.set_isa("auto")


def _problem(M, K, N, seed=0, x_dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    lo, hi = QRANGE[x_dtype]
    x = torch.randint(lo, hi + 1, (M, K), dtype=x_dtype, generator=g)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    return x, w, ws, torch.randn(N, generator=g), g


def _every_path(fn, threads=(1, 2)):
    """fn() on every path and thread count; all equal; returns the first."""
    outs = []
    for name in PATHS:
        for n in threads:
            torch.set_num_threads(n)
            with qk.use_isa(name):
                outs.append((name, n, fn()))
    first = outs[0][2]
    for name, n, out in outs[1:]:
        assert out.dtype == first.dtype and torch.equal(out, first), (name, n)
    return first


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_pack_equals_the_reference_and_unpacks(M, K, N):
    _, w, _, _, _ = _problem(M, K, N)
    packed = qk.pack_linear_weight(w)
    assert torch.equal(packed, R.pack_linear_weight(w))
    assert packed.shape == (R.packed_bytes(N, K),)
    assert torch.equal(R.unpack_linear_weight(packed, N, K), w)
    panels = packed[R.HEADER :].view((N + 47) // 48, -1)
    sums = panels[:, R.packed_kp(K) * 48 :].contiguous().view(torch.int32).reshape(-1)[:N]
    assert torch.equal(sums, w.to(torch.int32).sum(1, dtype=torch.int32))  # the zero point's column sums


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize(
    "out_dtype,bias,relu,requant",
    [
        (torch.uint8, "float", False, "float"),
        (torch.int8, "int32", True, "fixed"),
        (torch.float32, "float", True, "float"),
        (torch.int32, None, False, "float"),
    ],
)
def test_packed_equals_int8_linear_on_every_path(M, K, N, out_dtype, bias, relu, requant):
    x, w, ws, fb, g = _problem(M, K, N, seed=M + K + N)
    b = {"float": fb, "int32": torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g), None: None}[bias]
    so, zo = (0.07, 3 if out_dtype == torch.uint8 else -3) if out_dtype in QRANGE else (1.0, 0)
    packed = R.pack_linear_weight(w)
    args = (x, w, ws, b, 0.02, 131, so, zo, out_dtype, relu, requant)
    want = R.int8_linear(*args)
    got = _every_path(lambda: torch.ops.qlab.int8_linear_packed(x, packed, N, ws, b, 0.02, 131, so, zo, out_dtype,
                                                                relu, None, requant))
    assert torch.equal(got, want)
    assert torch.equal(R.int8_linear_packed(x, packed, N, ws, b, 0.02, 131, so, zo, out_dtype, relu, None, requant),
                       want)


@pytest.mark.parametrize("out_dtype,table_dtype", [(torch.uint8, torch.uint8), (torch.int8, torch.uint8),
                                                   (torch.uint8, torch.int8)])
def test_table_epilogue_is_a_lookup_on_the_codes(out_dtype, table_dtype):
    x, w, ws, b, g = _problem(37, 70, 100, seed=5)
    lo, hi = QRANGE[table_dtype]
    table = torch.randint(lo, hi + 1, (256,), dtype=table_dtype, generator=g)
    zo = 10 if out_dtype == torch.uint8 else -10
    codes = R.int8_linear(x, w, ws, b, 0.02, 131, 0.05, zo, out_dtype, False, "float")
    want = table[codes.long() - QRANGE[out_dtype][0]]
    packed = qk.pack_linear_weight(w)
    got = _every_path(lambda: qk.int8_linear_packed(x, packed, 100, ws, b, x_scale=0.02, x_zero_point=131,
                                                    out_scale=0.05, out_zero_point=zo, out_dtype=out_dtype,
                                                    table=table))
    assert got.dtype == table_dtype and torch.equal(got, want)


@pytest.mark.parametrize("shape", [(37, 70, 100), (1, 5, 3), (2, 3, 64, 48)])
def test_residual_epilogue_adds_the_skip_connection(shape):
    """``residual`` (float32 out): ``int8_linear(...) + residual``, one float32 add, the same bits on every path."""
    *lead, K, N = shape
    x, w, ws, b, g = _problem(int(torch.tensor(lead).prod()), K, N, seed=K + N)
    x = x.reshape(*lead, K)
    residual = torch.randn(*lead, N, generator=g) * 3
    want = R.int8_linear(x, w, ws, b, 0.02, 131, 1.0, 0, torch.float32, True, "float") + residual
    packed = qk.pack_linear_weight(w)
    got = _every_path(lambda: qk.int8_linear_packed(x, packed, N, ws, b, x_scale=0.02, x_zero_point=131,
                                                    out_dtype=torch.float32, relu=True, residual=residual))
    assert torch.equal(got, want)
    strided = torch.stack([residual, -residual], -1)[..., 0]  # a strided view (stride 2) is read as it is
    assert not strided.is_contiguous() and torch.equal(strided, residual)
    assert torch.equal(torch.ops.qlab.int8_linear_packed(x, packed, N, ws, b, 0.02, 131, 1.0, 0, torch.float32, True,
                                                         None, "float", strided), want)


def test_gelu_table_epilogue_equals_float_gelu_between_quantizations():
    """Equation (3) inside the kernel: fc1 -> uint8 codes -> table equals dequantize -> GELU -> quantize."""
    x, w, ws, b, _ = _problem(20, 64, 96, seed=6)
    sg, zg, sh, zh = 0.04, 120, 0.02, 9
    table = int8_mlp.gelu_table(sg, zg, sh, zh)
    codes = qk.int8_linear(x, w, ws, b, x_scale=0.02, x_zero_point=131, out_scale=sg, out_zero_point=zg)
    chain = torch.quantize_per_tensor(
        torch.nn.functional.gelu((codes.float() - zg) * torch.tensor(sg)), sh, zh, torch.quint8).int_repr()
    got = qk.int8_linear_packed(x, qk.pack_linear_weight(w), 96, ws, b, x_scale=0.02, x_zero_point=131,
                                out_scale=sg, out_zero_point=zg, table=table)
    assert torch.equal(got, chain)


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(
    M=st.integers(1, 40), K=st.integers(1, 150), N=st.integers(1, 120), seed=st.integers(0, 2**16),
    x_signed=st.booleans(), zx=st.sampled_from(["min", "max", "mid"]), out_dtype=st.sampled_from(
        [torch.uint8, torch.int8, torch.float32]), relu=st.booleans(), strided=st.booleans(),
)
def test_packed_property(M, K, N, seed, x_signed, zx, out_dtype, relu, strided):
    x_dtype = torch.int8 if x_signed else torch.uint8
    x, w, ws, b, _ = _problem(M, K, N, seed, x_dtype)
    if strided:  # a column-strided view of x is read as it is
        x = torch.cat([x, x], 1)[:, ::2]
    lo, hi = QRANGE[x_dtype]
    z = {"min": lo, "max": hi, "mid": (lo + hi) // 2}[zx]
    so, zo = (0.3, QRANGE[out_dtype][1]) if out_dtype in QRANGE else (1.0, 0)
    want = R.int8_linear(x, w, ws, b, 0.01, z, so, zo, out_dtype, relu, "float")
    packed = qk.pack_linear_weight(w)
    got = _every_path(lambda: torch.ops.qlab.int8_linear_packed(x, packed, N, ws, b, 0.01, z, so, zo, out_dtype,
                                                                relu, None, "float"))
    assert torch.equal(got, want)


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(
    M=st.integers(1, 40), K=st.integers(1, 300), N=st.integers(1, 120), seed=st.integers(0, 2**16),
    x_signed=st.booleans(), zx=st.sampled_from(["min", "max", "mid"]), out_dtype=st.sampled_from(
        [torch.uint8, torch.int8, torch.float32, torch.int32]), relu=st.booleans(), outlier=st.booleans(),
)
def test_seven_bit_codes_are_exact(M, K, N, seed, x_signed, zx, out_dtype, relu, outlier):
    """Codes below 128 send the AVX2 path to ``vpmaddubsw`` (exact only for them: 2 * 127 * 128 = 32512 fits int16);
    extreme weights (-128 and 127 everywhere) make every pair sum as large as it gets. ``outlier``: one code of the
    last row is 255 (uint8) or -1 (int8), so a task holding it takes the int16 route -- same results either way."""
    x_dtype = torch.int8 if x_signed else torch.uint8
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 128, (M, K), dtype=x_dtype, generator=g)
    if outlier:
        x[-1, K // 2] = -1 if x_signed else 255
    w = torch.where(torch.rand(N, K, generator=g) < 0.5, -128, 127).to(torch.int8)
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    b = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g)
    lo, hi = QRANGE[x_dtype]
    z = {"min": lo, "max": hi, "mid": (lo + hi) // 2}[zx]
    so, zo = (3.0, 7) if out_dtype in QRANGE else (1.0, 0)
    want = R.int8_linear(x, w, ws, b, 0.01, z, so, zo, out_dtype, relu, "fixed" if out_dtype in QRANGE else "float")
    packed = qk.pack_linear_weight(w)
    requant = "fixed" if out_dtype in QRANGE else "float"
    got = _every_path(lambda: torch.ops.qlab.int8_linear_packed(x, packed, N, ws, b, 0.01, z, so, zo, out_dtype,
                                                                relu, None, requant))
    assert torch.equal(got, want)


def test_opcheck():
    x, w, ws, b, _ = _problem(6, 21, 50, seed=7)
    table = torch.arange(256).flip(0).to(torch.uint8)
    torch.library.opcheck(torch.ops.qlab.pack_linear_weight.default, (w,))
    packed = qk.pack_linear_weight(w)
    for args in ((x, packed, 50, ws, b, 0.02, 128, 0.1, 3, torch.uint8, True, table, "float"),
                 (x.reshape(2, 3, 21), packed, 50, ws, None, 0.02, 128, 1.0, 0, torch.float32, False, None, "float"),
                 (x, packed, 50, ws, b, 0.02, 128, 1.0, 0, torch.float32, False, None, "float", torch.randn(6, 50))):
        torch.library.opcheck(torch.ops.qlab.int8_linear_packed.default, args)


class _PackedBlock(torch.nn.Module):
    def __init__(self, w, ws, b):
        super().__init__()
        self.register_buffer("packed", qk.pack_linear_weight(w))
        self.register_buffer("ws", ws)
        self.register_buffer("b", b)
        self.register_buffer("table", int8_mlp.gelu_table(0.05, 128, 0.02, 10))
        self.n = w.shape[0]

    def forward(self, x):
        h = torch.ops.qlab.int8_linear_packed(x, self.packed, self.n, self.ws, self.b, 0.02, 128, 0.05, 128,
                                              torch.uint8, False, self.table, "float")
        return h.float() * 2


def test_packed_under_compile_and_export():
    x, w, ws, b, _ = _problem(17, 24, 40, seed=8)
    x = x.reshape(1, 17, 24)
    block = _PackedBlock(w, ws, b)
    want = block(x)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(block, fullgraph=True, backend="aot_eager")(x), want)
    tokens = torch.export.Dim("tokens", min=2, max=512)
    ep = torch.export.export(block, (x,), dynamic_shapes=({1: tokens},))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.qlab.int8_linear_packed.default) == 1
    x2 = _problem(30, 24, 40, seed=9)[0].reshape(1, 30, 24)
    assert torch.equal(ep.module()(x2), block(x2))


def _kw(**over):
    x, w, ws, b, _ = _problem(4, 10, 20, seed=11)
    kw = dict(x=x, packed_weight=qk.pack_linear_weight(w), out_features=20, weight_scale=ws, bias=b, x_scale=0.02,
              x_zero_point=128, out_scale=0.1, out_zero_point=0, out_dtype=torch.uint8, relu=False, table=None,
              requant="float", residual=None)
    kw.update(over)
    return kw


@pytest.mark.parametrize(
    "over,exc,match",
    [
        ({"packed_weight": torch.zeros(1, 10, dtype=torch.int8)}, ValueError, "must be pack_linear_weight"),
        ({"packed_weight": torch.zeros(3328, dtype=torch.uint8)}, TypeError, "packed_weight must have dtype"),
        ({"packed_weight": torch.zeros(3328, dtype=torch.int8)}, ValueError, r"header says \[20, 10\].* for \[0, 0\]"),
        ({"out_features": 0}, ValueError, "out_features must be >= 1"),
        ({"out_features": 60}, ValueError, r"packed_weight must be .*\[60, 10\]"),
        ({"table": torch.zeros(10, dtype=torch.uint8)}, ValueError, r"table must have shape \[256\]"),
        ({"table": torch.zeros(256)}, TypeError, "table must have dtype torch.uint8 or torch.int8"),
        ({"table": torch.zeros(256, dtype=torch.uint8), "out_dtype": torch.float32, "out_scale": 1.0},
         ValueError, "table maps 8-bit output codes"),
        ({"x": torch.zeros(4, 11, dtype=torch.uint8)}, ValueError, r"\[20, 11\].* packed for \[20, 10\]"),
        ({"x": torch.zeros(4, 10)}, TypeError, "x must have dtype torch.uint8 or torch.int8"),
        ({"x_zero_point": 300}, ValueError, r"x_zero_point must lie in \[0, 255\]"),
        ({"weight_scale": torch.zeros(20)}, ValueError, "weight_scale must be positive and finite"),
        ({"residual": torch.zeros(4, 20)}, ValueError, "residual is added to a float32 output"),
        ({"residual": torch.zeros(4, 21), "out_dtype": torch.float32, "out_scale": 1.0}, ValueError,
         r"residual must have the output's shape \[..., out_features\] = \[4, 20\]"),
        ({"residual": torch.zeros(4, 20, dtype=torch.float64), "out_dtype": torch.float32, "out_scale": 1.0},
         TypeError, "residual must have dtype torch.float32"),
    ],
)
@pytest.mark.parametrize("impl", ["op", "reference"])
def test_bad_arguments_are_named(over, exc, match, impl):
    kw = _kw(**over)
    fn = torch.ops.qlab.int8_linear_packed if impl == "op" else R.int8_linear_packed
    with pytest.raises(exc, match=match):
        fn(*kw.values())


def test_non_contiguous_packed_weight_and_bad_pack_input():
    kw = _kw()
    p = kw["packed_weight"]
    kw["packed_weight"] = torch.stack([p, p], 1).reshape(-1)[::2]  # the same bytes, stride 2
    with pytest.raises(ValueError, match="not contiguous"):
        torch.ops.qlab.int8_linear_packed(*kw.values())
    with pytest.raises(TypeError, match="weight must have dtype torch.int8"):
        qk.pack_linear_weight(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"weight must have shape \[out_features, in_features\]"):
        qk.pack_linear_weight(torch.zeros(3, dtype=torch.int8))
    with pytest.raises(TypeError, match="out_features must be an int"):
        qk.int8_linear_packed(kw["x"], p, 20.0, kw["weight_scale"], x_scale=0.02, x_zero_point=1, out_scale=0.1)
