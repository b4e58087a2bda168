"""qlab.inside (notebook 12): the instruction emulations against integer arithmetic, the GELU table against
PyTorch's dequantize -> GELU -> quantize, integer-only GELU / LayerNorm swapped into real models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qlab import inside


def test_vpdpbusd_is_four_products_per_lane_in_int32():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (64,), dtype=torch.uint8, generator=g)
    b = torch.randint(-128, 128, (64,), dtype=torch.int8, generator=g)
    acc = torch.arange(16, dtype=torch.int32)
    got = inside.vpdpbusd(acc, a, b)
    want = [int(acc[i]) + sum(int(a[4 * i + j]) * int(b[4 * i + j]) for j in range(4)) for i in range(16)]
    assert got.tolist() == want
    wrapped = inside.vpdpbusd(torch.full((1,), 2**31 - 1, dtype=torch.int32), a[:4].fill_(1), b[:4].fill_(1))
    assert wrapped.item() == -(2**31) + 3  # int32 wraps, as the instruction


def test_vpmaddubsw_saturates_where_vpdpbusd_does_not():
    a = torch.full((4,), 255, dtype=torch.uint8)
    b = torch.full((4,), -128, dtype=torch.int8)
    assert inside.vpmaddubsw(a, b).tolist() == [-(2**15), -(2**15)]  # 2 * 255 * -128 = -65280 saturates
    assert inside.vpdpbusd(torch.zeros(1, dtype=torch.int32), a, b).item() == 4 * 255 * -128
    with pytest.raises(TypeError, match="a must be uint8 and b int8"):
        inside.vpmaddubsw(b, a)
    with pytest.raises(ValueError, match="multiple of 4"):
        inside.vpdpbusd(torch.zeros(1, dtype=torch.int32), a[:3], b[:3])


@settings(max_examples=60, deadline=None)
@given(s_in=st.floats(1e-3, 0.5), z_in=st.integers(0, 255), s_out=st.floats(1e-3, 0.5), z_out=st.integers(-128, 127),
       seed=st.integers(0, 2**16))
def test_gelu_table_is_dequantize_gelu_quantize_bit_for_bit(s_in, z_in, s_out, z_out, seed):
    table = inside.gelu_table(s_in, z_in, s_out, z_out, torch.uint8, torch.int8)
    codes = torch.randint(0, 256, (1000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    x = torch._make_per_tensor_quantized_tensor(codes, s_in, z_in).dequantize()
    want = torch.quantize_per_tensor(nn.functional.gelu(x), s_out, z_out, torch.qint8).int_repr()
    assert torch.equal(inside.lookup(codes, table), want)


def test_gelu_table_bad_arguments():
    with pytest.raises(TypeError, match="in_dtype must be"):
        inside.gelu_table(0.1, 0, 0.1, 0, torch.int32)
    with pytest.raises(ValueError, match="in_scale"):
        inside.gelu_table(0.0, 0, 0.1, 0)
    with pytest.raises(ValueError, match="out_zero_point"):
        inside.gelu_table(0.1, 0, 0.1, 300)
    with pytest.raises(TypeError, match="256-entry"):
        inside.lookup(torch.zeros(3, dtype=torch.uint8), torch.zeros(10))


def test_integer_only_swaps_modules_and_stays_close_at_16_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 8)).eval()
    x = torch.randn(50, 32)
    m = inside.integer_only(model, lambda mm: mm(x), bits=16)
    assert isinstance(m[1], inside.IntGELU) and isinstance(m[2], inside.IntLayerNorm)
    assert isinstance(model[1], nn.GELU)  # the original is unchanged
    with torch.no_grad():
        cos = nn.functional.cosine_similarity(m(x), model(x), dim=1)
    assert cos.min() > 0.99
    only_ln = inside.integer_only(model, lambda mm: mm(x), gelu=False)
    assert isinstance(only_ln[1], nn.GELU) and isinstance(only_ln[2], inside.IntLayerNorm)
    with pytest.raises(ValueError, match="must not both be False"):
        inside.integer_only(model, lambda mm: mm(x), gelu=False, layernorm=False)
    with pytest.raises(TypeError, match="no GELU"):
        inside.integer_only(nn.Linear(2, 2), lambda mm: None, layernorm=False)
    with pytest.raises(TypeError, match="calibrate must be callable"):
        inside.integer_only(model, None)
    with pytest.raises(ValueError, match="bits"):
        inside.integer_only(model, lambda mm: mm(x), bits=2)


def test_onednn_code_diffs_read_the_uint8_rows():
    rec = inside.load_linear_results()  # the VNNI recording: oneDNN computes exactly there, so within 1 code
    diffs = inside.onednn_code_diffs(rec)
    assert set(diffs) == {"qkv", "proj", "fc1", "fc2"} and all(0 <= d <= 1 for d in diffs.values())
    with pytest.raises(ValueError, match="no results at threads=3"):
        inside.onednn_code_diffs(rec, 3)
    with pytest.raises(ValueError, match="no uint8 rows with M=5"):
        inside.onednn_code_diffs(rec, 1, tokens=5)


def test_linear_recording_reads_as_speeds_over_onednn(tmp_path):
    rec = inside.load_linear_results()
    for threads in (1, 2):
        rows = inside.linear_vs_onednn(rec, threads)
        assert set(rows) == {f"{n}, out {d}" for n in ("qkv", "proj", "fc1", "fc2") for d in ("uint8", "float32")}
        for r in rows.values():
            assert set(r) == {"qlab int8_linear", "qlab int8_linear_packed"} and all(v > 0 for v in r.values())
    with pytest.raises(ValueError, match="no results at threads=3"):
        inside.linear_vs_onednn(rec, 3)
    with pytest.raises(ValueError, match="no rows with M=5"):
        inside.linear_vs_onednn(rec, 1, tokens=5)
    with pytest.raises(FileNotFoundError, match="bench_linear.py"):
        inside.load_linear_results(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a bench_linear.py results file"):
        inside.load_linear_results(tmp_path / "x.json")


def test_every_simd_path_has_a_recording_pair(monkeypatch):
    import qlab.kernels as qk

    for threads in (1, 2):
        table = inside.paths_table(threads)
        assert {r["path"] for r in table.values()} == set(qk.ISAS) - {"scalar"}
        for label, r in table.items():
            att_name, lin_name, path = inside.PATH_RECORDINGS[label]
            assert r["path"] == path and label.startswith(path)
            att = inside.load_attention_results(inside.ATTENTION_RESULTS.with_name(att_name))
            assert r["qlab"] == att["vit_small"][str(threads)]["variants"][inside.QLAB_DEFAULT]["median_ms"]
            assert set(r["linear_vs_onednn"]) == {"qkv", "proj", "fc1", "fc2"} and r["cpu"] == att["meta"]["cpu"]
    with pytest.raises(ValueError, match="threads"):
        inside.paths_table(0)
    # a recording of another path under a path's name is refused, not silently compared
    monkeypatch.setitem(inside.PATH_RECORDINGS, "avx2", ("attention-avx2.json", "linear.json", "avx2"))
    with pytest.raises(ValueError, match=r"recorded on qlab's avx2 path, got native \(avx512_vnni\)"):
        inside.paths_table(1)


@pytest.mark.parametrize("name, onednn", [("vit-e2e.json", "avx512_vnni"), ("vit-e2e-amx.json", "amx")])
def test_e2e_grid_recording_reads_as_rows(tmp_path, name, onednn):
    rec = inside.load_e2e_results(inside.E2E_RESULTS.with_name(name))
    assert rec["meta"]["int8_units"]["onednn"] == onednn  # the path notebook 12 says it was recorded on
    rows = inside.e2e_table(rec)
    assert {(r["model"], r["batch"]) for r in rows} >= {("vit_base_patch16_224", 1), ("vit_base_patch16_224", 16),
                                                        ("vit_small_patch16_224", 16)}
    assert {r["threads"] for r in rows} == {1, 2}
    for r in rows:
        ms = r["ms"]
        assert r["qlab_vs_fp32"] == ms["fp32 eager"] / ms[inside.QLAB_DEFAULT]
        assert r["qlab_vs_pt2e"] == ms[inside.PT2E] / ms[inside.QLAB_DEFAULT] and 0 < r["qlab_cosine"] <= 1
    with pytest.raises(FileNotFoundError, match="bench_attention.py --grid"):
        inside.load_e2e_results(tmp_path / "none.json")
    (tmp_path / "x.json").write_text('{"meta": {}}')
    with pytest.raises(ValueError, match="has no 'e2e' section"):
        inside.load_e2e_results(tmp_path / "x.json")


def test_int8_mlp_refuses_what_it_cannot_convert():
    from timm.layers import Mlp

    from qlab import int8_mlp

    ok = Mlp(16, 32)
    assert int8_mlp.supported_mlp(ok)
    for bad in (Mlp(16, 32, act_layer=nn.ReLU), Mlp(16, 32, act_layer=lambda: nn.GELU(approximate="tanh")),
                Mlp(16, 32, norm_layer=nn.LayerNorm), nn.Linear(16, 16)):
        assert not int8_mlp.supported_mlp(bad)
        with pytest.raises(TypeError, match="mlp must be a timm Mlp with fc1, an exact nn.GELU"):
            int8_mlp.ObservedMlp(bad)
