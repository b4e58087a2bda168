"""qlab.transformer_plots: the profiler table, the figures of notebook 10 (they return what they draw) and the
reading of the recording, on a small synthetic recording."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from qlab import transformer_plots as tp


def path(ms, sp):
    return {"median_ms": ms, "q25_ms": ms * 0.95, "q75_ms": ms * 1.05, "speedup_vs_fp32": sp}


def fake_bench():
    shape = {"fp32 eager": path(100, 1.0), "fp32 compiled": path(80, 1.25), "int8 fast": path(30, 3.3),
             "int8 slow": path(90, 1.1)}
    shapes = {"sentences": {"paths": shape}}
    for b in (1, 20):
        for t in (8, 32):
            shapes[f"{b}x{t}"] = {"paths": {k: path(v["median_ms"] * b * t / 300, v["speedup_vs_fp32"] * (t / 32))
                                            for k, v in shape.items()}}
    quality = {"int8 fast": {"min_cosine": 0.95, "retrieval_agreement": 0.96},
               "int8 slow": {"min_cosine": 0.995, "retrieval_agreement": 0.995}}
    return {"latency": {"1": {"shapes": shapes}}, "quality": quality}


def test_speedup_table_and_targets():
    bench = fake_bench()
    table = tp.speedup_table(bench)
    assert table["int8 fast"]["vs_compiled"] == pytest.approx(80 / 30) and table["fp32 eager"]["vs_fp32"] == 1.0
    goals = tp.targets(bench)
    assert set(goals) == {"int8 fast", "int8 slow"}
    assert goals["int8 fast"] == {"2x fp32 eager": True, "1.5x fp32 compiled": True, "min cosine 0.99": False,
                                  "retrieval 99%": False}
    assert goals["int8 slow"]["min cosine 0.99"] and not goals["int8 slow"]["2x fp32 eager"]


def test_draw_latency_returns_the_plotted_points():
    fig = Figure()
    grid = tp.draw_latency(fig, fake_bench(), ["int8 fast", "int8 slow"])
    assert sorted(grid) == [1, 20] and grid[20]["int8 fast"] == {8: pytest.approx(3.3 / 4), 32: 3.3}
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # two paths and the 1x line
    with pytest.raises(ValueError, match="paths must be one of"):
        tp.draw_latency(Figure(), fake_bench(), ["int4"])


def test_draw_smoothing_reports_the_ratios():
    act = torch.ones(16)
    act[3] = 30.0
    w = torch.full((16,), 0.5)
    fig = Figure()
    r = tp.draw_smoothing(fig, act, w, 0.5, {"0.5": {"min_cosine": 0.97}})
    assert r["act_before"] == pytest.approx(30.0) and r["act_after"] == pytest.approx(30.0**0.5)
    assert r["weight_after"] == pytest.approx(30.0**0.5) and r["min_cosine"] == 0.97
    assert tp.draw_smoothing(Figure(), act, w, 0.0)["act_after"] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="alpha must be"):
        tp.draw_smoothing(Figure(), act, w, 2.0)


def test_profile_ops_counts_calls_per_run():
    a = torch.randn(64, 64)
    rows = tp.profile_ops(lambda: torch.mm(a, a).relu(), runs=3, top=5)
    ops = {r["op"]: r for r in rows}
    assert ops["aten::mm"]["calls"] == 1 and ops["aten::relu"]["calls"] == 1
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-6 or len(rows) == 5
    assert "aten::mm" in tp.format_profile(rows, "toy")
    with pytest.raises(TypeError, match="fn must be a zero-argument callable"):
        tp.profile_ops(3)


def test_the_committed_recording_has_what_the_notebook_reads():
    bench = tp.load_results()
    assert {"meta", "quality", "latency", "smoothquant_alpha", "int4"} <= set(bench)
    assert "sentences" in bench["latency"]["1"]["shapes"] and bench["latency"]["1"]["generated_calls"]
    assert all(p["rounds"] >= 15 for p in bench["latency"]["1"]["shapes"]["sentences"]["paths"].values())
