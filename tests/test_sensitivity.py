"""qlab.sensitivity on a small depthwise-separable net: the numeric debugger, scans, and mixed precision that
stops exactly when the budget holds, with its arguments checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qlab import pt2e, sensitivity


class Separable(nn.Module):
    """conv-bn-relu6 -> depthwise-relu6 -> pointwise -> linear: one of each layer kind of EfficientNet."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
        self.dw, self.act2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6()
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = self.pw(self.act2(self.dw(x)))
        return self.fc(x.mean((2, 3)))


LAYERS = ["stem", "dw", "pw", "fc"]


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = Separable().eval()
    with torch.no_grad():
        m.dw.weight[:4] *= 0.02  # small channels next to large ones: per-tensor weights lose them
        m.bn.running_var.uniform_(0.5, 2.0, generator=g)
    calib = [torch.randn(4, 3, 12, 12, generator=g) for _ in range(2)]
    x = torch.randn(6, 3, 12, 12, generator=g)
    with torch.no_grad():
        ref = m(x)
    ep = pt2e.export_batch_dynamic(m, x[:2])
    return {"model": m, "ep": ep, "calib": calib, "x": x, "ref": ref, "clusters": np.array([0, 0, 1, 1, 2, 2])}


def _args(s):
    return s["ep"], s["calib"], s["x"], s["ref"], s["clusters"]


def test_numeric_debug_compares_node_by_node_and_changes_nothing(setup):
    ep_code = setup["ep"].graph_module.code
    prepared = sensitivity.calibrate(setup["ep"], setup["calib"], pt2e.x86_quantizer())
    assert setup["ep"].graph_module.code == ep_code  # calibrate leaves the exported program as it was
    observers = [n for n in prepared.graph.nodes if n.op == "call_module" and "activation_post_process" in n.target]
    assert observers and all(getattr(prepared, n.target).min_val.isfinite().all() for n in observers)  # saw data
    code = prepared.code
    with torch.no_grad():
        before = prepared(setup["x"])
    rows, converted = sensitivity.numeric_debug(prepared, setup["x"][:4])
    ops = [r["op"] for r in rows]
    assert ops.count("conv2d") == 3 and ops.count("linear") == 1
    assert all(np.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 10 for r in rows if r["op"] in ("conv2d", "linear"))
    assert {r["module"] for r in rows if r["op"] == "conv2d"} == {"stem", "dw", "pw"}
    assert prepared.code == code and "quantize_per_tensor" in converted.code
    with torch.no_grad():
        assert torch.equal(prepared(setup["x"]), before)
    with pytest.raises(ValueError, match="not yet converted"):
        sensitivity.numeric_debug(converted, setup["x"][:2])
    with pytest.raises(ValueError, match=r"len\(inputs\) must be"):
        sensitivity.numeric_debug(prepared, setup["x"].repeat(2, 1, 1, 1))


def test_scan_and_rank(setup):
    only = sensitivity.scan(*_args(setup), LAYERS, kind="only", weights="per_tensor")
    skip = sensitivity.scan(*_args(setup), LAYERS, kind="skip", weights="per_tensor")
    assert [r["layer"] for r in only] == LAYERS and all(r["seconds"] > 0 for r in only)
    worst_only = sensitivity.rank(only)[0]
    assert only[LAYERS.index(worst_only)]["measures"]["sqnr_db"]["value"] == min(
        r["measures"]["sqnr_db"]["value"] for r in only)
    best_skip = sensitivity.rank(skip)[0]
    assert skip[LAYERS.index(best_skip)]["measures"]["sqnr_db"]["value"] == max(
        r["measures"]["sqnr_db"]["value"] for r in skip)
    assert sensitivity.rank(only, "kl")[0] == max(only, key=lambda r: r["measures"]["kl"]["value"])["layer"]
    with pytest.raises(ValueError, match="rows must be the non-empty result of one scan"):
        sensitivity.rank(only + skip)


@pytest.mark.parametrize("budget", [0.5, 80.0])
def test_mixed_precision_stops_exactly_when_the_budget_holds(setup, budget):
    steps = sensitivity.mixed_precision(*_args(setup), ["dw", "stem", "pw", "fc"], budget, weights="per_tensor")
    assert sensitivity.meets(steps[-1], budget) and not any(sensitivity.meets(s, budget) for s in steps[:-1])
    for k, s in enumerate(steps):
        assert s.float_layers == ["dw", "stem", "pw", "fc"][:k]
        kinds = pt2e.weight_kinds(s.model)
        assert sorted(n for n, v in kinds.items() if v == "float") == sorted(s.float_layers)
    if budget == 80.0:  # only the all-float model is that close; every step made the model bigger
        assert len(steps) == 5 and steps[-1].summary["sqnr_db"].low > 80
        assert [s.bytes for s in steps] == sorted(s.bytes for s in steps)
    else:
        assert len(steps) == 1


def test_mixed_precision_max_float_and_state(setup):
    ep_code = setup["ep"].graph_module.code
    steps = sensitivity.mixed_precision(*_args(setup), LAYERS, 80.0, max_float=1)
    assert len(steps) == 2 and not sensitivity.meets(steps[-1], 80.0)
    assert setup["ep"].graph_module.code == ep_code  # the exported program is not changed
    row = steps[1].as_dict()
    assert row["float_layers"] == ["stem"] and set(row["measures"]) == {"top1", "top5", "kl", "sqnr_db"}


def test_bad_arguments_are_named(setup):
    args = _args(setup)
    with pytest.raises(ValueError, match="budget must be a finite number in"):
        sensitivity.mixed_precision(*args, LAYERS, 0.0)
    with pytest.raises(ValueError, match="budget must be a finite number in"):
        sensitivity.mixed_precision(*args, LAYERS, 1.5, measure="top1")
    with pytest.raises(ValueError, match="ranking must name modules of the exported model, got 'conv1'"):
        sensitivity.mixed_precision(*args, ["conv1"], 10.0)
    with pytest.raises(ValueError, match="ranking must not name a layer twice"):
        sensitivity.mixed_precision(*args, ["dw", "dw"], 10.0)
    with pytest.raises(ValueError, match="layers must name modules"):
        sensitivity.scan(*args, ["stem", "head"])
    ep, calib, x, ref, clusters = args
    with pytest.raises(ValueError, match=r"calibration\[0\] must be batches of shape \(N, 3, 12, 12\)"):
        sensitivity.evaluate(ep, [torch.zeros(2, 3, 16, 16)], x, ref, clusters, pt2e.x86_quantizer())
    with pytest.raises(ValueError, match="ref must hold the float logits of the 6 inputs"):
        sensitivity.evaluate(ep, calib, x, ref[:3], clusters, pt2e.x86_quantizer())
    with pytest.raises(ValueError, match="clusters must give one photo id per input"):
        sensitivity.evaluate(ep, calib, x, ref, clusters[:2], pt2e.x86_quantizer())
    with pytest.raises(TypeError, match="exported must be a torch.export.ExportedProgram"):
        sensitivity.evaluate(setup["model"], calib, x, ref, clusters, pt2e.x86_quantizer())
    with pytest.raises(TypeError, match="exported must be a torch.export.ExportedProgram"):
        sensitivity.calibrate(setup["model"], calib, pt2e.x86_quantizer())
    with pytest.raises(ValueError, match="calibration must hold at least one batch"):
        sensitivity.calibrate(ep, [], pt2e.x86_quantizer())


def test_time_steps_reports_each_steps_latency(setup):
    steps = sensitivity.mixed_precision(*_args(setup), LAYERS, 80.0, max_float=0)  # one step: one compile
    t = sensitivity.time_steps(steps, setup["x"][:1], rounds=3, extra={"fp32": lambda: setup["model"](setup["x"][:1])})
    assert set(t) == {"fp32", "step 0"}
    assert all(s.latency_ms["q25"] <= s.latency_ms["median"] <= s.latency_ms["q75"] for s in steps)
    with pytest.raises(ValueError, match="steps must be mixed_precision's result"):
        sensitivity.time_steps([], setup["x"][:1])
