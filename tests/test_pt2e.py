"""qlab.pt2e: the PT2E helpers behind notebooks 06/07 and benchmarks/bench_models.py."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import qlab
from qlab import fxviz, pt2e
from qlab.models import state_dict_bytes

warnings.filterwarnings("ignore", message=".*treespec.children_specs.*deprecated")


class Tiny(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        x = self.relu(self.conv(x))
        return self.fc(x.mean((2, 3)))


def _mlp():
    # weight-heavy: per-channel scales and zero points are small next to the int8 weights
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 256), nn.ReLU(), nn.Linear(256, 256)).eval()


def _calib():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]


def test_export_batch_dynamic_accepts_any_batch():
    torch.manual_seed(0)
    m = Tiny().eval()
    ep = pt2e.export_batch_dynamic(m, torch.randn(2, 3, 8, 8))
    gm = ep.module()
    for b in (1, 3, 7):
        x = torch.randn(b, 3, 8, 8)
        assert torch.equal(gm(x), m(x))


def test_export_batch_dynamic_validates():
    m = Tiny().eval()
    with pytest.raises(ValueError, match="batch dimension of at least 2"):
        pt2e.export_batch_dynamic(m, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="max_batch must be"):
        pt2e.export_batch_dynamic(m, torch.randn(4, 3, 8, 8), max_batch=2)
    with pytest.raises(TypeError, match="example must be a torch.Tensor"):
        pt2e.export_batch_dynamic(m, [1, 2])


def test_pt2e_int8_writes_qdq_and_stays_close():
    torch.manual_seed(0)
    m = Tiny().eval()
    q = pt2e.pt2e_int8(m, _calib())
    kinds = fxviz.graph_summary(q)["kinds"]
    assert kinds["quantize"] >= 2 and kinds["dequantize"] >= 3 and "observer" not in kinds
    x = _calib()[0]
    with torch.no_grad():
        ref, out = m(x), q(x)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99
    assert any(t.dtype == torch.int8 for t in pt2e.graph_tensors(q).values())
    with pytest.raises(ValueError, match="calibration must hold"):
        pt2e.pt2e_int8(m, [])


def test_int8_weights_take_about_a_quarter_of_the_bytes():
    torch.manual_seed(0)
    m = _mlp()
    q = pt2e.pt2e_int8(m, _calib())
    assert pt2e.graph_bytes(q) < 0.3 * state_dict_bytes(m)
    assert "1.weight" in q.state_dict() and "1.weight" not in pt2e.graph_tensors(q)  # fp32 copy, unused


def test_graph_tensors_of_fx_model_are_its_quantized_modules():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
    torch.manual_seed(0)
    m = _mlp()
    p = prepare_fx(m, get_default_qconfig_mapping("x86"), (_calib()[0],))
    p(_calib()[0])
    q = convert_fx(p)
    keys = set(pt2e.graph_tensors(q))
    assert keys >= {k for k in q.state_dict() if "packed" in k}  # functional int8 linears: packed weights
    assert any(k.startswith("1.") for k in keys) and any(k.startswith("3.") for k in keys)
    assert pt2e.graph_bytes(q) < 0.3 * state_dict_bytes(m)


def test_graph_bytes_of_plain_module_is_state_dict_bytes():
    m = Tiny()
    assert set(pt2e.graph_tensors(m)) == set(m.state_dict())
    assert pt2e.graph_bytes(m) == state_dict_bytes(m)


def test_lower_compiles_a_private_copy_with_freezing_restored():
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    x = torch.randn(4, 8)
    before = inductor_config.freezing
    compiled = pt2e.lower(m, x, freezing=not before)
    assert inductor_config.freezing == before
    with torch.no_grad():
        assert torch.allclose(compiled(x), m(x), atol=1e-5)


def test_drop_log_message_drops_only_that_message(caplog):
    log = logging.getLogger("qlab.test.pt2e")
    f = qlab.drop_log_message("qlab.test.pt2e", "No CUDA runtime")
    try:
        with caplog.at_level(logging.WARNING, logger="qlab.test.pt2e"):
            log.warning("No CUDA runtime is found, using CUDA_HOME='/x'")
            log.warning("something else")
        assert [r.getMessage() for r in caplog.records] == ["something else"]
    finally:
        log.removeFilter(f)
    with pytest.raises(TypeError, match="start non-empty"):
        qlab.drop_log_message("x", "")


def test_drawn_weight_dequantize_sits_above_its_op():
    from matplotlib.figure import Figure

    torch.manual_seed(0)
    q = pt2e.pt2e_int8(Tiny().eval(), _calib())
    labels = fxviz.draw_graph(Figure(), q)["labels"]
    follows = [labels[i + 1] for i, lbl in enumerate(labels) if lbl == "dequantize_per_channel"]
    assert follows and set(follows) <= {"conv2d", "linear"}
