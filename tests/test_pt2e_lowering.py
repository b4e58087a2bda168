"""qlab.pt2e_lowering: dequantize -> matmul -> quantize chains of a PT2E graph become qlab int8 ops."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx

import qlab.kernels  # noqa: F401 -- registers torch.ops.qlab.*
from qlab import data, vit, vit_inspect
from qlab import pt2e_lowering as pl

qd = pl._qd()

# Quantized tensors are deprecated in PyTorch 2.15 (notebook 01); the decomposed quantize op uses their kernel.
pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*deprecated:UserWarning")


@pytest.fixture(scope="module")
def converted():
    torch.manual_seed(0)
    model = vit.build(**(vit.DIGITS_VIT | {"depth": 2})).eval()
    cal = data.calibration_batches(64, 32, 32)
    return model, vit.pt2e_quantize(model, cal), cal


def test_pt2e_graph_has_dequantize_matmul_chains(converted):
    _, g, _ = converted
    mms = [n for n in g.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.matmul.default]
    assert len(mms) == 4
    for mm in mms:
        assert all(a.target == qd.dequantize_per_tensor.default for a in mm.args)


def test_lowering_replaces_every_matmul_and_linear(converted):
    model, g, cal = converted
    x = cal[1][:16]
    before = g(x)
    low, report = pl.lower_to_qlab(copy.deepcopy(g), softmax="torch")
    assert report == {
        "scale_mul": 2,
        "b_int8": 4,
        "matmul": 2,
        "matmul_requantized": 2,
        "attention": 0,
        "linear": 9,
        "linear_requantized": 0,
        "quantize": 15,
        "dropout": 10,
        "skipped": [],
    }
    targets = pl.count_targets(low)
    assert targets["qlab.int8_bmm.default"] == 4 and targets["qlab.int8_linear_packed.default"] == 9
    assert "aten.matmul.default" not in targets and "aten.linear.default" not in targets
    assert "aten.mul.Tensor" not in targets  # the softmax scale is folded into a quantize
    assert not any(k.startswith("quantized_decomposed") for k in targets) and "aten.dropout.default" not in targets
    assert targets["qlab.quantize_per_tensor.default"] == 15
    after = low(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)  # the same codes, exact integer accumulation
    assert vit_inspect.check_int8_calls(low, x[:2]) == {"int8_bmm": 4, "int8_linear_packed": 9, "all_equal": True}
    # any batch size still works (the graph was exported with a dynamic batch)
    assert low(cal[0][:1]).shape == (1, 10)
    # packed=False: int8_linear on the plain codes, the same outputs bit for bit
    plain, _ = pl.lower_to_qlab(copy.deepcopy(g), packed=False, softmax="torch")
    assert pl.count_targets(plain)["qlab.int8_linear.default"] == 9
    assert torch.equal(plain(x), after)
    with pytest.raises(TypeError, match="packed must be a bool"):
        pl.lower_to_qlab(copy.deepcopy(g), packed="yes")


@torch.no_grad()
def test_lowering_fuses_each_attention(converted):
    _, g, cal = converted
    x = cal[1][:32]
    unfused, _ = pl.lower_to_qlab(copy.deepcopy(g), softmax="torch")
    low, report = pl.lower_to_qlab(copy.deepcopy(g))  # softmax="float", the default
    # each attention's int8_bmm -> softmax -> [dropout] -> quantize -> int8_bmm is one call; the P quantizes and the
    # attention dropouts went with it
    assert (report["attention"], report["quantize"], report["dropout"], report["skipped"]) == (2, 13, 8, [])
    targets = pl.count_targets(low)
    assert targets["qlab.int8_attention.default"] == 2 and "qlab.int8_bmm.default" not in targets
    assert "aten.softmax.int" not in targets
    # every fused call equals its pure-PyTorch definition; the model is the unfused one but for P codes that torch's
    # exp and qlab's fixed-order exp round differently
    assert vit_inspect.check_int8_calls(low, x[:4]) == {"int8_bmm": 0, "int8_attention": 2,
                                                       "int8_linear_packed": 9, "all_equal": True}
    got, want = low(x), unfused(x)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)) > 0.9999
    # P's scale comes from the graph (PT2E's observer), not the fused op's default 1/255
    calls = [n for n in low.graph.nodes if n.target == torch.ops.qlab.int8_attention.default]
    p_scales = {n.args[15] for n in calls}
    quantizes = [n for n in unfused.graph.nodes if n.target == torch.ops.qlab.int8_bmm.default
                 and n.args[0].target == torch.ops.qlab.quantize_per_tensor.default
                 and n.args[0].args[0].target == torch.ops.aten.softmax.int]
    assert p_scales == {n.args[2] for n in quantizes} and len(quantizes) == 2
    # export and compile see the fused op through its fake kernel
    assert torch.equal(torch.export.export(low, (x,)).module()(x), got)
    assert torch.equal(torch.compile(low, fullgraph=True)(x), got)


def _attention_graph(dim: int, p_zero_point: int) -> fx.GraphModule:
    ops = torch.ops.qlab
    g = fx.Graph()
    q, k, v = g.placeholder("q"), g.placeholder("k"), g.placeholder("v")
    s = g.call_function(ops.int8_bmm.default, (q, k, 0.01, 128, 0.02, 0, 1.0, 0, torch.float32, False, "float"))
    sm = g.call_function(torch.ops.aten.softmax.int, (s, dim))
    p = g.call_function(qd.quantize_per_tensor.default, (sm, 1 / 255, p_zero_point, 0, 255, torch.uint8))
    o = g.call_function(ops.int8_bmm.default, (p, v, 1 / 255, p_zero_point, 0.03, 0, 1.0, 0, torch.float32, False,
                                              "float"))
    g.output(o)
    return fx.GraphModule(torch.nn.Module(), g)


def test_attention_fusion_checks_the_pattern():
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (2, 5, 8), dtype=torch.uint8, generator=gen)
    k = torch.randint(-128, 128, (2, 8, 5), dtype=torch.int8, generator=gen)  # kᵀ, as the matmul rewrite leaves it
    v = torch.randint(-128, 128, (2, 5, 3), dtype=torch.int8, generator=gen)
    gm = _attention_graph(-1, 0)
    want = gm(q, k, v)
    report = {"attention": 0, "skipped": []}
    pl._fuse_attention(gm, "float", report)
    gm.recompile()
    assert report == {"attention": 1, "skipped": []}
    assert torch.equal(gm(q, k, v), want)  # logits spread well apart: the same P codes as torch.softmax's
    for dim, zp, why in ((1, 0, "softmax over dim 1, not the last"),
                         (-1, 3, "not quantized to uint8 with zero point 0")):
        gm = _attention_graph(dim, zp)
        report = {"attention": 0, "skipped": []}
        pl._fuse_attention(gm, "float", report)
        assert report["attention"] == 0 and why in report["skipped"][0]


def test_lowering_only_matmuls(converted):
    _, g, cal = converted
    low, report = pl.lower_to_qlab(copy.deepcopy(g), linear=False, fold_scale_mul=False, cleanup=False)
    assert report["scale_mul"] == 0 and report["linear"] == 0 and report["matmul"] + report["matmul_requantized"] == 4
    targets = pl.count_targets(low)
    assert targets["aten.linear.default"] == 9 and targets["aten.mul.Tensor"] == 2
    torch.testing.assert_close(low(cal[0][:4]), g(cal[0][:4]), rtol=0, atol=1e-4)


def test_requant_fixed_runs(converted):
    _, g, cal = converted
    low, _ = pl.lower_to_qlab(copy.deepcopy(g), requant="fixed")
    torch.testing.assert_close(low(cal[0][:4]), g(cal[0][:4]), rtol=0, atol=1e-2)


def _quantize_graph(c: float, scale: float, zp: int) -> fx.GraphModule:
    g = fx.Graph()
    x = g.placeholder("x")
    m = g.call_function(torch.ops.aten.mul.Tensor, (x, c))
    q = g.call_function(qd.quantize_per_tensor.default, (m, scale, zp, 0, 255, torch.uint8))
    g.output(q)
    return fx.GraphModule(torch.nn.Module(), g)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([0.125, 0.25, 0.5, 2.0]), st.floats(1e-3, 1.0), st.integers(0, 255), st.integers(0, 2**31 - 1))
def test_scale_fold_gives_the_same_codes_for_powers_of_two(c, scale, zp, seed):
    x = torch.randn(500, generator=torch.Generator().manual_seed(seed)) * 3
    gm = _quantize_graph(c, scale, zp)
    want = gm(x)
    report = {"scale_mul": 0}
    pl._fold_scale_mul(gm, report)
    gm.recompile()
    assert report["scale_mul"] == 1
    assert not any(n.target == torch.ops.aten.mul.Tensor for n in gm.graph.nodes)
    assert torch.equal(gm(x), want)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-4, 1.0), st.integers(-128, 127), st.booleans(), st.integers(0, 2**31 - 1))
def test_fast_quantize_equals_the_decomposed_op(scale, zp, signed, seed):
    scale = float(torch.tensor(scale, dtype=torch.float32))  # scales in a PT2E graph are float32 values
    x = torch.randn(300, generator=torch.Generator().manual_seed(seed)) * 50 * scale
    dtype, lo, hi = (torch.int8, -128, 127) if signed else (torch.uint8, 0, 255)
    zp = zp if signed else zp + 128

    got = torch.ops.qlab.quantize_per_tensor(x, scale, zp, dtype)
    assert torch.equal(got, qd.quantize_per_tensor(x, scale, zp, lo, hi, dtype))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(0, 2**31 - 1))
def test_uint8_to_int8_keeps_the_real_values(n, seed):
    codes = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    s8 = pl.uint8_to_int8(codes)
    assert s8.dtype == torch.int8
    assert torch.equal(s8.to(torch.int32), codes.to(torch.int32) - 128)
    zp = 131
    assert torch.equal(
        qd.dequantize_per_tensor(codes, 0.1, zp, 0, 255, torch.uint8),
        qd.dequantize_per_tensor(s8, 0.1, zp - 128, -128, 127, torch.int8),
    )


def test_unsupported_patterns_are_left_alone():
    g = fx.Graph()
    a, b = g.placeholder("a"), g.placeholder("b")
    da = g.call_function(qd.dequantize_per_tensor.default, (a, 0.1, 3, 0, 255, torch.uint8))
    mm = g.call_function(torch.ops.aten.matmul.default, (da, b))  # b is float: not a quantized matmul
    g.output(mm)
    gm = fx.GraphModule(torch.nn.Module(), g)
    gm, report = pl.lower_to_qlab(gm)
    assert report["matmul"] == 0 and "operand is not a static per-tensor dequantize" in report["skipped"][0]
    assert pl.count_targets(gm) == {"aten.matmul.default": 1, "quantized_decomposed.dequantize_per_tensor.default": 1}


def test_bad_arguments():
    with pytest.raises(TypeError, match="gm must be a torch.fx.GraphModule"):
        pl.lower_to_qlab(torch.nn.Linear(2, 2))
    gm = fx.symbolic_trace(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="requant must be one of"):
        pl.lower_to_qlab(gm, requant="nearest")
    with pytest.raises(ValueError, match="softmax must be one of"):
        pl.lower_to_qlab(gm, softmax="int")
