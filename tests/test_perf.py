"""qlab.perf: results loading, geomeans, crossover and the figures of notebook 07."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from qlab import perf


def _results():
    recs = []
    for model, sp in (
        ("a", {"fx_x86": 2.0, "fx_fbgemm": 1.0, "pt2e_inductor": 4.0}),
        ("b", {"fx_x86": 0.5, "fx_fbgemm": 0.25}),
        ("c", {"fx_x86": 2.0, "fx_fbgemm": 1.0, "pt2e_inductor": 1.0}),
    ):
        recs.append(
            {
                "model": model,
                "path": "fp32",
                "batch": 1,
                "status": "ok",
                "ms": 10.0,
                "fp32_ms": 10.0,
                "speedup": 1.0,
                "bytes": 400,
                "fp32_bytes": 400,
            }
        )
        for path, s in sp.items():
            recs.append(
                {
                    "model": model,
                    "path": path,
                    "batch": 1,
                    "status": "ok",
                    "ms": 10.0 / s,
                    "fp32_ms": 10.0,
                    "speedup": s,
                    "bytes": 100 if path == "fx_x86" else 120,
                    "fp32_bytes": 400,
                }
            )
    recs.append({"model": "a", "path": "eager_x86", "batch": 1, "status": "skipped", "reason": "no stubs"})
    recs.append(
        {
            "model": "a",
            "path": "fx_x86",
            "batch": 8,
            "status": "ok",
            "ms": 1.0,
            "fp32_ms": 3.0,
            "speedup": 3.0,
            "bytes": 100,
            "fp32_bytes": 400,
        }
    )
    sweep = [
        {"layer": "linear", "x": x, "fp32_ms": 1.0, "int8_ms": 1.0 / s, "int8_op_ms": 0.5 / s, "xlabel": "rows"}
        for x, s in ((1, 0.5), (4, 0.9), (16, 1.2), (64, 2.0))
    ]
    return {"machine": {"cpu": "test"}, "records": recs, "sweep": sweep}


def test_geomeans_per_path_and_common_subset():
    r = _results()
    g = perf.geomeans(r, batch=1)
    assert g["fx_x86"]["geomean"] == pytest.approx((2 * 0.5 * 2) ** (1 / 3))
    assert g["fx_x86"]["n"] == 3
    assert g["pt2e_inductor"]["n"] == 2 and g["pt2e_inductor"]["geomean"] == pytest.approx(2.0)
    common = perf.geomeans(r, batch=1, paths=["fx_x86", "pt2e_inductor"], models=["a", "c"])
    assert common["fx_x86"]["geomean"] == pytest.approx(2.0) and common["fx_x86"]["models"] == ["a", "c"]
    g8 = perf.geomeans(r, batch=8)
    assert list(g8) == ["fx_x86"] and g8["fx_x86"]["geomean"] == pytest.approx(3.0) and g8["fx_x86"]["n"] == 1


def test_ok_records_and_speedup_table_ignore_skipped():
    r = _results()
    assert all(x["status"] == "ok" for x in perf.ok_records(r))
    assert "eager_x86" not in perf.speedup_table(r, 1)
    assert perf.speedup_table(r, 1)["fx_fbgemm"] == {"a": 1.0, "b": 0.25, "c": 1.0}


def test_crossover():
    assert perf.crossover([1, 4, 16, 64], [0.5, 0.9, 1.2, 2.0]) == 16
    assert perf.crossover([1, 4, 16], [1.5, 0.9, 1.2]) == 16  # must hold for every larger size
    assert perf.crossover([1, 4], [0.5, 0.9]) is None
    assert perf.crossover([1, 4], [2.0, 3.0]) == 1
    with pytest.raises(ValueError, match="strictly increasing"):
        perf.crossover([4, 1], [1, 1])
    with pytest.raises(ValueError, match="one length"):
        perf.crossover([1, 2], [1])


def test_load_results(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"machine": {}, "records": []}))
    assert perf.load_results(p)["sweep"] == []
    with pytest.raises(FileNotFoundError, match="bench_models.py"):
        perf.load_results(tmp_path / "missing.json")
    p.write_text(json.dumps({"records": []}))
    with pytest.raises(ValueError, match="machine"):
        perf.load_results(p)


def test_draw_functions_return_what_they_show():
    r = _results()
    out = perf.draw_speedups(Figure(), r, batch=1)
    assert out["speedups"]["fx_x86"] == {"a": 2.0, "b": 0.5, "c": 2.0}
    assert ("b", "fx_x86", 0.5) in out["slower"] and ("b", "fx_fbgemm", 0.25) in out["slower"]
    g = perf.draw_geomeans(Figure(), r, batches=[1, 8])
    assert g[8]["fx_x86"]["geomean"] == pytest.approx(3.0) and "fp32" not in g[1]
    sizes = perf.draw_sizes(Figure(), r)
    assert sizes["a"] == {"fp32": 400, "int8": 100, "path": "fx_x86", "ratio": 4.0}
    sw = perf.draw_sweep(Figure(), r["sweep"])
    assert sw["linear"]["crossover"] == 16 and sw["linear"]["kernel_crossover"] == 4
    with pytest.raises(ValueError, match="sweep is empty"):
        perf.draw_sweep(Figure(), [])
    with pytest.raises(TypeError, match="fig must be"):
        perf.draw_speedups(None, r, 1)


def _kernel_results():
    rows = []
    for shape, times in (
        ("q.kT H=12 T=197", {"fp32": 0.8, "q.matmul": 1.0, "int_mm": 0.4, "qlab": 0.2}),
        ("attn.v H=12 T=197", {"fp32": 0.6, "q.matmul": 1.2, "int_mm": 0.3, "qlab": 0.3}),
    ):
        for threads in (1, 2):
            for method, ms in times.items():
                rows.append(
                    {
                        "kind": "attention",
                        "model": "ViT-Base",
                        "shape": shape,
                        "threads": threads,
                        "method": method,
                        "ms": ms / threads,
                    }
                )
    rows.append(
        {"kind": "linear", "model": "ViT-Base", "shape": "fc1 768->3072", "threads": 1, "method": "fp32", "ms": 8.0}
    )
    rows.append(
        {"kind": "linear", "model": "ViT-Base", "shape": "fc1 768->3072", "threads": 1, "method": "torch.ao", "ms": 2.0}
    )
    return {"machine": {"cpu": "test"}, "results": rows}


def test_kernel_results_load_table_and_figure(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps(_kernel_results()))
    r = perf.load_kernel_results(p)
    t = perf.kernel_table(r, "attention", threads=1)
    assert t["ViT-Base q.kT H=12 T=197"] == {"fp32": 0.8, "q.matmul": 1.0, "int_mm": 0.4, "qlab": 0.2}
    out = perf.draw_kernels(Figure(), r, "attention", threads=2)
    assert out["speedup"]["ViT-Base q.kT H=12 T=197"]["qlab"] == pytest.approx(4.0)
    assert out["speedup"]["ViT-Base attn.v H=12 T=197"]["q.matmul"] == pytest.approx(0.5)
    assert perf.draw_kernels(Figure(), r, "linear")["speedup"] == {"ViT-Base fc1 768->3072": {"torch.ao": 4.0}}
    with pytest.raises(ValueError, match="threads=4"):
        perf.kernel_table(r, "attention", threads=4)
    with pytest.raises(ValueError, match="kind must be one of"):
        perf.kernel_table(r, "conv")
    with pytest.raises(FileNotFoundError, match="bench_kernels.py"):
        perf.load_kernel_results(tmp_path / "missing.json")
    p.write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="machine"):
        perf.load_kernel_results(p)


def test_geomeans_leave_out_broken_models_and_say_so():
    r = _results()
    for rec in r["records"]:
        if rec["path"] == "fx_x86" and rec["batch"] == 1:
            rec["agreement"] = {"sqnr_db": 2.6 if rec["model"] == "b" else 30.0}
    assert [(x["model"], x["path"]) for x in perf.broken_records(r, 1)] == [("b", "fx_x86")]
    g = perf.geomeans(r, batch=1)
    assert g["fx_x86"]["models"] == ["a", "c"] and g["fx_x86"]["excluded"] == ["b"]
    assert g["fx_x86"]["geomean"] == pytest.approx(2.0)
    kept = perf.geomeans(r, batch=1, min_sqnr_db=None)
    assert kept["fx_x86"]["n"] == 3 and kept["fx_x86"]["excluded"] == []
    assert perf.speedup_table(r, 1, min_sqnr_db=perf.MIN_SQNR_DB)["fx_x86"] == {"a": 2.0, "c": 2.0}
    with pytest.raises(TypeError, match="min_sqnr_db"):
        perf.broken_records(r, 1, min_sqnr_db="10")
