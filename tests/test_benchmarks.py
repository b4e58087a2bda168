"""The benchmark scripts run: a smoke run of bench_models on the smallest model and paths (the full studies
are recorded by hand on a quiet machine, never timed in the tests)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_models_smoke_run_writes_a_results_file(tmp_path):
    out = tmp_path / "models.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_models.py"), "--quick", "--models", "digits_cnn",
           "--paths", "fp32,eager_x86,fx_fbgemm", "--no-sweep", "--rounds", "1", "--target-s", "0.01",
           "--threads", "1", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    recs = {r["path"]: r for r in data["records"]}
    assert set(recs) == {"fp32", "eager_x86", "fx_fbgemm"} and all(r["status"] == "ok" for r in recs.values())
    assert recs["eager_x86"]["agreement"]["sqnr_db"] > 20 and recs["eager_x86"]["accuracy"] > 0.95
    assert data["machine"]["threads"] == 1 and data["runs"][-1]["load_before"] >= 0
