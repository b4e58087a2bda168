"""qlab.roofline and the probes behind it (qlab/csrc/probes.cpp): notebook 12's live roofline.

The probes are timed, so these tests bound them by what the hardware can physically do rather than by a speed:
a vpdpbusd core does at most 2 x 64 multiply-adds a cycle, a vpmaddwd core 2 x 16, an AMX core 1024.
"""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

import qlab.kernels as qk
from qlab import roofline as rl

native = pytest.mark.skipif(qk.backend() != "native", reason="the probes are compiled code")
MAX_MACS_PER_CYCLE = {"avx2": 2 * 16, "avx_vnni": 2 * 32, "avx512_vnni": 2 * 64, "amx": 1024}


@native
def test_clock_is_a_plausible_clock():
    assert 0.5 < rl.clock_ghz() < 6.5


@native
@pytest.mark.parametrize("isa", rl.PROBED_ISAS)
def test_peak_is_below_what_the_instruction_can_do(isa):
    if isa not in qk.available_isas():
        with pytest.raises(ValueError, match=f"isa '{isa}' is not supported by this CPU"):
            rl.peak_gmacs(isa)
        return
    ghz = rl.clock_ghz()
    peak = rl.peak_gmacs(isa, seconds=0.005, rounds=3)
    # the clock may rise between the two probes (turbo), hence the slack
    assert MAX_MACS_PER_CYCLE[isa] * ghz * 1.3 > peak > MAX_MACS_PER_CYCLE[isa] * ghz / 16


@native
@pytest.mark.parametrize(
    "isa, n, match",
    [("scalar", 10, "the scalar path has no one"), ("avx512", 10, "isa must be one of"), ("avx2", 0, "n must be"),
     ("avx2", 1 << 27, "n must be")],
)
def test_the_probe_op_refuses_bad_arguments(isa, n, match):
    if isa == "avx2" and "avx2" not in qk.available_isas():
        pytest.skip("no AVX2")
    with pytest.raises(ValueError, match=match):
        torch.ops.qlab._peak_burst(isa, n)
    with pytest.raises(ValueError, match="n must be"):
        torch.ops.qlab._clock_burst(0)


def test_python_arguments_are_checked():
    if qk.backend() == "native":
        with pytest.raises(ValueError, match="isa must be one of"):
            rl.peak_gmacs("scalar")
        with pytest.raises(ValueError, match="seconds"):
            rl.peak_gmacs(seconds=0)
    with pytest.raises(ValueError, match="out_bytes"):
        rl.linear_intensity(1, 2, 3, out_bytes=2)
    with pytest.raises(ValueError, match="m must be"):
        rl.linear_intensity(0, 2, 3)
    with pytest.raises(ValueError, match="bandwidth"):
        rl.attainable_gmacs(1.0, 100.0, 0.0)
    with pytest.raises(TypeError, match="shapes must be"):
        rl.time_linears({})
    with pytest.raises(TypeError, match=r"shapes\['a'\] must be \(M, K, N\)"):
        rl.time_linears({"a": (1, 2)})
    with pytest.raises(ValueError, match="nbytes"):
        rl.read_bandwidth_gbs(1000)


def test_without_the_compiled_kernels_the_probes_say_why(monkeypatch):
    monkeypatch.setitem(qk._ops.state, "backend", "reference")
    with pytest.raises(RuntimeError, match="pure-PyTorch reference"):
        rl.peak_gmacs()
    with pytest.raises(RuntimeError, match="pure-PyTorch reference"):
        rl.clock_ghz()


def test_intensity_and_roof_are_equations_4_and_5():
    assert rl.linear_intensity(1, 768, 3072) == pytest.approx(768 * 3072 / (768 * 3072 + 768 + 3072))
    assert rl.linear_intensity(197, 768, 768, out_bytes=4) == pytest.approx(
        197 * 768 * 768 / (768 * 768 + 197 * 768 + 4 * 197 * 768))
    assert rl.attainable_gmacs(2.0, 100.0, 20.0) == 40.0
    assert rl.attainable_gmacs(50.0, 100.0, 20.0) == 100.0


def test_last_level_cache_is_read_from_sysfs():
    llc = rl.last_level_cache_bytes()
    assert llc is None or llc >= 1 << 15


def test_time_linears_and_the_plot():
    res = rl.time_linears({"one token": (1, 64, 96), "many": (40, 64, 96)}, rounds=2, cold_bytes=1 << 20)
    assert res["bandwidth_gbs"] > 0
    pts = res["points"]
    assert set(pts) == {"one token", "many"}
    assert pts["one token"]["intensity"] == pytest.approx(rl.linear_intensity(1, 64, 96))
    for name, m in (("one token", 1), ("many", 40)):
        assert pts[name]["ms"] > 0
        assert pts[name]["gmacs"] == pytest.approx(m * 64 * 96 / (pts[name]["ms"] / 1e3) / 1e9)
    fig = Figure()
    share = rl.draw_roofline(fig, 100.0, 20.0, pts, recorded={"label": "rec", "peaks": {"vnni": 300.0},
                                                              "points": {"fc1": (150.0, 200.0)}})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    for name, p in pts.items():
        assert share[name] == pytest.approx(p["gmacs"] / min(100.0, 20.0 * p["intensity"]))


def test_recorded_roofline_reads_the_committed_kernel_recording():
    from qlab import perf

    rec = rl.recorded_roofline(perf.load_kernel_results())
    assert set(rec["peaks"]) >= {"avx512_vnni"}
    fc1 = [v for k, v in rec["points"].items() if k.startswith("fc1 ")]
    assert fc1 and all(i == pytest.approx(rl.linear_intensity(197, 768, 3072)) for i, _ in fc1)
    assert all(0 < g < max(rec["peaks"].values()) for _, g in rec["points"].values())
