"""qlab.support_matrix: the list of supported quantized operations, generated from the installed PyTorch."""

from __future__ import annotations

import pytest
import torch

from qlab import support_matrix as sm
from qlab import support_table as st

# Quantized tensors are deprecated in PyTorch 2.15 (notebook 01 explains it); the probes need them.
pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*deprecated:UserWarning")


@pytest.fixture(scope="module")
def probes():
    return {r.op: r for r in sm.probe_ops()}


def test_dispatcher_rows_are_the_quantizedcpu_kernels():
    rows = sm.quantized_cpu_kernels()
    names = [r.op for r in rows]
    assert names == sorted(names) and len(names) == len(set(names)) > 50
    assert {r.category for r in rows} == {"QuantizedCPU kernel"}
    assert "quantized::matmul" in names and "aten::view" in names and "quantized::linear" in names
    assert "aten::bmm" not in names and "aten::bmm.out" not in names and "aten::mul.Tensor" not in names
    for r in rows:
        assert sm.has_kernel(r.op, "QuantizedCPU")
    assert dict((r.op, r.detail) for r in rows)["quantized::matmul"] == "quantized only"


def test_probes_reproduce_the_user_report(probes):
    mul = probes["x * 0.125 (scale q)"]
    assert mul.category == "fails" and "promoteTypes with quantized numbers" in mul.detail
    mm = probes["q @ k.transpose(-2, -1)"]
    assert mm.category == "fails"
    assert "Could not run 'aten::bmm.out' with arguments from the 'QuantizedCPU' backend" in mm.detail
    assert "aten::matmul" in mm.detail and "aten::bmm" in mm.detail


def test_probes_classify_composite_and_kernel_ops(probes):
    assert probes["x.reshape(...)"].category == "works: composite"  # reshape -> view
    assert "aten::view" in probes["x.reshape(...)"].detail
    assert probes["x.transpose(-2, -1)"].category == "works: composite"
    assert probes["F.gelu"].category == "works: QuantizedCPU kernel"
    assert probes["torch.cat([a, b])"].category == "works: QuantizedCPU kernel"
    assert probes["x.softmax(-1)"].category == "fails"
    assert probes["F.linear(x, w)"].category == "fails"
    for r in probes.values():
        assert r.category in ("fails", "works: composite", "works: QuantizedCPU kernel")
        if r.category != "fails":
            assert r.detail.endswith("torch.quint8")  # a quantized result, not a float one


def test_float_inside_matches_a_hand_made_dequantize_matmul_quantize():
    rows = {r.op: r for r in sm.float_inside()}
    assert rows["quantized::matmul"].category == "float inside"
    assert rows["quantized::softmax"].category == "float inside"
    assert rows["quantized::linear"].category == "own arithmetic"  # integer accumulation
    assert rows["quantized::add"].category == "own arithmetic"
    # the same claim, independently of the module's bookkeeping
    g = torch.Generator().manual_seed(3)
    a = torch.quantize_per_tensor(torch.randn(4, 33, 20, generator=g), 0.04, 120, torch.quint8)
    b = torch.quantize_per_tensor(torch.randn(4, 20, 17, generator=g), 0.03, 131, torch.quint8)
    got = torch.ops.quantized.matmul(a, b, 0.2, 125)
    want = torch.quantize_per_tensor(a.dequantize() @ b.dequantize(), 0.2, 125, torch.quint8)
    assert torch.equal(got.int_repr(), want.int_repr())


def test_time_vs_fp32_returns_ratios():
    r = sm.time_vs_fp32(repeats=3, shape=(2, 17, 8))
    assert set(r) == {"quantized::matmul", "quantized::linear"}
    assert all(v > 0 for v in r.values())


def test_x86_inductor_annotations():
    rows = {r.op: r.category for r in sm.x86_inductor_annotations()}
    assert rows["aten::matmul"] == "X86Inductor: opt-in"
    assert rows["aten::linear"] == "X86Inductor: default"
    assert rows["aten::conv2d"] == "X86Inductor: default"
    assert rows["aten::softmax.int"] == "X86Inductor: fp32"
    assert rows["aten::layer_norm"] == "X86Inductor: fp32"
    assert rows["aten::bmm"] == "X86Inductor: fp32"  # only aten.matmul has the opt-in
    assert rows["aten::mul.Tensor (scalar)"] == "X86Inductor: fp32"


ROWS = [
    sm.Row("aten::view", "QuantizedCPU kernel", "also CPU"),
    sm.Row("quantized::matmul", "float inside", "all 10 codes equal"),
    sm.Row("torch.bmm(a, b)", "fails", "NotImplementedError: ... 'aten::bmm.out' ..."),
]


def test_filter_and_counts():
    assert st.filter_rows(ROWS, "BMM") == [ROWS[2]]
    assert st.filter_rows(ROWS, "") == ROWS
    assert st.filter_rows(ROWS, "", category="float inside") == [ROWS[1]]
    assert st.filter_rows(ROWS, "codes", category="fails") == []
    assert st.counts(ROWS) == {"QuantizedCPU kernel": 1, "fails": 1, "float inside": 1}
    assert list(st.counts(ROWS)) == ["QuantizedCPU kernel", "fails", "float inside"]  # CATEGORIES order
    with pytest.raises(ValueError, match="category must be one of"):
        st.filter_rows(ROWS, "", category="nope")
    with pytest.raises(TypeError, match="text must be a str"):
        st.filter_rows(ROWS, 3)


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    path = st.save(ROWS, tmp_path / "sub" / f"matrix.{suffix}")
    assert path.exists() and st.load(path) == ROWS


def test_save_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="fmt must be one of"):
        st.save(ROWS, tmp_path / "m.txt")


def test_html_escapes_and_limits():
    html = st.to_html(ROWS * 20, limit=5)
    assert "60 matching rows (first 5 shown)" in html and html.count("<tr>") == 6
    assert "&#x27;aten::bmm.out&#x27;" in html


def test_support_table_filters_and_updates_its_display():
    table = st.SupportTable(ROWS, text="matmul")
    assert table.result == [ROWS[1]] and table.redraws == 1
    updates = []

    class Handle:
        def update(self, obj, raw=False):
            updates.append((obj, raw))

    table._handle = Handle()
    table.controls["text"].value = "a"  # observers fire synchronously
    assert table.redraws == 2 and len(table.result) == 3
    table.controls["category"].value = "fails"
    assert table.result == [ROWS[2]]
    bundle, raw = updates[-1]
    assert raw and "1 matching rows" in bundle["text/plain"] and "<table>" in bundle["text/html"]
    with pytest.raises(ValueError, match="category must be one of"):
        st.SupportTable(ROWS, category="X86Inductor: default")
