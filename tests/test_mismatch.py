"""The seed report, the fused-kernel qparams formula, the isolated sources and the interactive figure."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlab import mismatch as mm
from qlab import mismatch_sources as src
from qlab.widgets import LiveFigure

REPORTED_REAL = list(range(128)) + list(range(127, 255))


@pytest.mark.parametrize("engine", ["fbgemm", "x86"])
def test_seed_reproduces_the_report(engine):
    r = mm.run_seed(1.0, engine=engine)
    assert r.fake_row == list(range(256))
    assert r.real_row == REPORTED_REAL
    # the fused weight fake quant ignored the scale the user wrote: it used the kernel's affine choice
    s, z = mm.fake_quant_qparams_used(r.prepared.conv.weight_fake_quant, r.prepared.conv.weight)
    assert z == -128 and abs(s - 1 / 255) < 1e-9
    assert mm.observer_qparams(r.prepared.conv.weight_fake_quant) == (pytest.approx(2 / 255), 0)
    assert r.converted.conv.weight().int_repr().flatten().tolist() == [127, 0, 0, 0, 127, 0, 0, 0, 127]


def test_corrected_setup_is_bit_identical():
    r = mm.run_seed(1.0, fake_quant="plain", weight_quant_min=-127, qparams="observers")
    assert torch.equal(r.fake_out, r.real_out.dequantize())
    assert torch.equal(r.fake_codes, r.real_codes)
    assert r.real_row == list(range(256))


def test_plain_fake_quant_with_2k_over_255_is_consistent_but_not_identity():
    r = mm.run_seed(1.0, fake_quant="plain")
    assert torch.equal(r.fake_codes, r.real_codes) and r.real_row == REPORTED_REAL


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-10, 10, width=32),
    st.floats(-10, 10, width=32),
    st.sampled_from(
        [(-128, 127, True), (0, 255, False), (-128, 127, False), (0, 255, True), (0, 127, False), (-127, 127, True)]
    ),
)
def test_fused_kernel_qparams_matches_the_kernel(a, b, cfg):
    lo, hi = min(a, b), max(a, b)
    qmin, qmax, sym = cfg
    s, z = torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32)
    torch.fused_moving_avg_obs_fake_quant(
        torch.zeros(2),
        torch.tensor([0]),
        torch.tensor([1]),
        torch.tensor(lo),
        torch.tensor(hi),
        s,
        z,
        0.01,
        qmin,
        qmax,
        -1,
        False,
        sym,
    )
    assert mm.fused_kernel_qparams(lo, hi, qmin, qmax, sym) == (s.item(), z.item())


def test_isolated_sources_measure_what_they_claim():
    fused = src.exp_fused_qparams()
    assert fused.detail["weights_differ"] > 0 and fused.max_lsb >= 1
    rq = src.exp_requant_rounding()
    assert rq["fbgemm"].n_diff == 0  # the reference is the kernel
    ties = src.exp_requant_rounding(ties=True)
    assert ties["fbgemm"].n_diff == 0 and ties["fixed_point"].n_diff > 0 and ties["fake"].n_diff > 0
    bias = src.exp_int32_bias()
    assert bias["qnnpack vs int32 ref"].n_diff == 0
    assert src.exp_reduce_range().max_lsb > 10
    sat = src.exp_saturation()
    assert sat.detail["saturated_pairs"] > 0 and sat.max_lsb > 1
    assert src.exp_saturation(act_max=127).n_diff == 0
    pool = src.exp_avgpool()
    assert pool["eager (no requant)"].max_lsb == 0.5
    bn = src.exp_bn_folding()
    assert bn["eval"].max_lsb <= 1 and bn["train"].max_lsb > 10


def test_simulation_switches():
    assert src.simulate(1.0, 1.0)["stats"].n_diff == 0
    assert src.simulate(1.0, 1.0, fused_qparams=True)["stats"].n_diff > 0
    assert src.simulate(1.0, 1.5, reduce_range=True)["stats"].max_lsb > 10
    assert src.simulate(1.0, 1.0, avgpool=True)["stats"].max_lsb == 0.5
    with pytest.raises(ValueError, match="source must be one of"):
        src.simulate(1.0, 1.0, warp_drive=True)


def test_draw_mismatch_in_a_live_figure():
    controls = {"k": W.FloatSlider(1.0, min=0.1, max=4.0), "input_max": W.FloatSlider(1.0, min=0.5, max=2.0)}
    controls.update({s: W.Checkbox(False, description=s) for s in src.SOURCES})
    lf = LiveFigure(src.draw_mismatch, controls, layout="v")
    assert lf.result["n_diff"] == 0 and lf.result["sources"] == []
    png = lf.png()
    lf.controls["fused_qparams"].value = True
    assert lf.result["n_diff"] > 0 and lf.result["sources"] == ["fused_qparams"]
    assert lf.png() != png


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: mm.run_seed(-1.0), ValueError, r"k must be a finite number > 0, got -1.0"),
        (lambda: mm.run_seed(1.0, engine="tpu"), ValueError, "engine must be one of"),
        (lambda: mm.seed_qconfig("magic"), ValueError, "fake_quant must be one of"),
        (lambda: mm.output_codes([1.0], 1.0, 0), TypeError, "y must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_the_real_avx2_kernel_saturates_like_the_reference():
    """PyTorch's fbgemm kernel, run in a subprocess held to AVX2, equals the saturating int16 reference."""
    from qlab import mismatch_sources

    r = mismatch_sources.exp_saturation_real_kernel(isa="AVX2")
    assert r["real_eq_saturating_ref"] and not r["real_eq_exact"] and r["max_lsb_vs_exact"] > 1
