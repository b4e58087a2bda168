"""qlab.timing: the one timer -- interleaved rounds, medians with IQR, speedups paired per round, load recorded."""

from __future__ import annotations

import math

import pytest

from qlab import timing


def test_geomean():
    assert timing.geomean([2.0, 0.5]) == pytest.approx(1.0)
    assert timing.geomean([1, 10, 100]) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="values must not be empty"):
        timing.geomean([])
    with pytest.raises(ValueError, match="positive and finite"):
        timing.geomean([1.0, 0.0])


def test_timing_median_iqr_spread():
    t = timing.Timing("x", [5.0, 1.0, 3.0, 2.0, 4.0])
    assert t.median == 3.0 and t.iqr == (2.0, 4.0) and t.spread == pytest.approx(2 / 3)
    assert timing.Timing("y", [1.0, 2.0]).median == 1.5
    assert math.isnan(timing.Timing("z").median)
    assert t.as_dict() == {"median_ms": 3.0, "q25_ms": 2.0, "q75_ms": 4.0, "rounds": 5, "calls_per_round": 1}


def test_time_interleaved_rotates_counts_and_records_the_load():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}
    out = timing.time_interleaved(fns, rounds=3, number=2, warmup=1)
    assert {n: len(t.samples) for n, t in out.items()} == {"a": 3, "b": 3, "c": 3}  # one sample per round
    assert all(t.number == 2 for t in out.values())
    timed = calls[3:]  # after one warm-up call each
    assert timed == list("aabbcc") + list("bbccaa") + list("ccaabb")
    assert len(out.load) == 2


def test_speedups_are_paired_per_round():
    # round 2 is slow for both: the paired ratio stays 2, the ratio of medians would not be exact
    t = {"base": timing.Timing("base", [10.0, 100.0, 12.0]), "fast": timing.Timing("fast", [5.0, 50.0, 6.0])}
    assert timing.speedups(t, "base") == {"base": 1.0, "fast": 2.0}
    with pytest.raises(ValueError, match="baseline must be one of"):
        timing.speedups(t, "nope")
    with pytest.raises(ValueError, match="time them together"):
        timing.speedups({"a": timing.Timing("a", [1.0]), "b": timing.Timing("b", [1.0, 2.0])}, "a")


def test_target_time_sets_the_number_of_calls():
    out = timing.time_interleaved({"a": lambda: None}, rounds=2, target_s=0.001, max_number=7)
    assert 1 <= out["a"].number <= 7


def test_time_interleaved_validates():
    with pytest.raises(TypeError, match="fns must be"):
        timing.time_interleaved({})
    with pytest.raises(TypeError, match=r"fns\['a'\] must be callable"):
        timing.time_interleaved({"a": 1})
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        timing.time_interleaved({"a": lambda: None}, rounds=0)
    with pytest.raises(TypeError, match="number must be an int"):
        timing.time_interleaved({"a": lambda: None}, number=1.5)
    with pytest.raises(ValueError, match="target_s must be"):
        timing.time_interleaved({"a": lambda: None}, target_s=0)


def test_wait_for_quiet(monkeypatch):
    monkeypatch.setattr(timing, "loadavg", lambda: 0.2)
    assert timing.wait_for_quiet(0.5) == 0.2
    monkeypatch.setattr(timing, "loadavg", lambda: 3.0)
    with pytest.raises(RuntimeError, match="stayed busy"):
        timing.wait_for_quiet(0.5, timeout_s=0, poll_s=0)


def test_iqr_overlap_says_when_two_medians_are_tied():
    assert timing.iqr_overlap((1.0, 2.0), (1.5, 3.0)) and timing.iqr_overlap((1.5, 3.0), (1.0, 2.0))
    assert timing.iqr_overlap((1.0, 2.0), (2.0, 3.0))  # touching counts as overlapping
    assert not timing.iqr_overlap((1.0, 2.0), (2.1, 3.0)) and not timing.iqr_overlap((2.1, 3.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="a must be a"):
        timing.iqr_overlap((2.0, 1.0), (1.0, 2.0))


def test_write_recording_ends_a_run_with_the_load_and_wall_time(tmp_path, monkeypatch, capsys):
    import json
    import time

    monkeypatch.setattr(timing, "loadavg", lambda: 0.37)
    meta = {"cpu": "x", "loadavg_before": 0.1}
    out = timing.write_recording(tmp_path / "new" / "r.json", meta, time.perf_counter() - 2.0, results={"a": 1})
    data = json.loads(out.read_text())
    assert list(data) == ["meta", "results"] and data["results"] == {"a": 1}
    assert data["meta"]["loadavg_after"] == 0.37 and 1.9 <= data["meta"]["wall_s"] <= 60
    assert data["meta"]["cpu"] == "x" and out.read_text().endswith("}\n")
    assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(TypeError, match="meta must be a dict"):
        timing.write_recording(tmp_path / "r.json", None, 0.0)
