"""qlab.fxviz: node kinds and the graph drawing (notebooks 05 and 06)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from qlab import fxviz

warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x)) + x


def _fx_stages():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(0)
    m = Small().eval()
    x = torch.randn(2, 1, 8, 8)
    traced = torch.fx.symbolic_trace(m)
    prepared = prepare_fx(copy.deepcopy(m), get_default_qconfig_mapping("x86"), (x,))
    prepared(x)
    converted = convert_fx(copy.deepcopy(prepared))
    return traced, prepared, converted


def test_traced_graph_is_all_float():
    traced, _, _ = _fx_stages()
    s = fxviz.graph_summary(traced)
    assert s["kinds"] == {"input": 1, "float op": 6, "output": 1}  # conv bn relu pool flatten fc
    assert s["nodes"] == 8 and s["edges"] == 7


def test_prepared_graph_has_observers_and_fused_conv():
    _, prepared, _ = _fx_stages()
    kinds = fxviz.node_kinds(prepared)
    labels = [fxviz.node_label(prepared, n) for n in kinds]
    assert any(lbl.startswith("conv: ConvReLU2d") for lbl in labels)  # conv + bn + relu fused by prepare_fx
    assert not any("BatchNorm" in lbl for lbl in labels)
    assert list(kinds.values()).count("observer") >= 4


def test_converted_graph_kinds_and_int8_propagation():
    _, _, converted = _fx_stages()
    kinds = fxviz.node_kinds(converted)
    by_label = {fxviz.node_label(converted, n): k for n, k in kinds.items()}
    assert by_label["quantize_per_tensor"] == "quantize"
    assert by_label["conv: QuantizedConvReLU2d"] == "int8 op"
    assert by_label["pool: MaxPool2d"] == "int8 op"  # a float module class, but on int8 data
    assert by_label["fc: QuantizedLinear"] == "int8 op"
    assert "dequantize" in by_label.values()
    assert fxviz.graph_summary(converted)["kinds"]["quantize"] >= 1


def test_residual_edges_counted():
    gm = torch.fx.symbolic_trace(Residual())
    s = fxviz.graph_summary(gm)
    assert s["nodes"] == 5  # x, a, b, add, output
    assert s["edges"] == 5  # x->a, a->b, b->add, x->add, add->output


def test_draw_graph_returns_what_it_draws():
    traced, prepared, converted = _fx_stages()
    fig = Figure()
    out = fxviz.draw_graph(fig, converted, title="converted", rows=5)
    assert out["nodes"] == fxviz.graph_summary(converted)["nodes"]
    assert out["kinds"] == fxviz.graph_summary(converted)["kinds"]
    assert len(out["labels"]) == out["nodes"]
    assert len(fig.axes) == 1
    fig2 = Figure()
    both = fxviz.draw_graphs(fig2, {"traced": traced, "prepared": prepared, "converted": converted})
    assert list(both) == ["traced", "prepared", "converted"]
    assert len(fig2.axes) == 3
    assert both["prepared"]["kinds"]["observer"] >= 4


def test_exported_program_accepted():
    ep = torch.export.export(Residual(), (torch.randn(2, 4),))
    s = fxviz.graph_summary(ep)
    assert s["kinds"]["input"] >= 1 and s["kinds"]["float op"] >= 3


def test_bad_arguments_name_the_argument():
    gm = torch.fx.symbolic_trace(Residual())
    with pytest.raises(TypeError, match="gm must be"):
        fxviz.graph_summary(Residual())
    with pytest.raises(TypeError, match="fig must be"):
        fxviz.draw_graph("not a figure", gm)
    with pytest.raises(ValueError, match="rows must be"):
        fxviz.draw_graph(Figure(), gm, rows=0)
    with pytest.raises(TypeError, match="graphs must be"):
        fxviz.draw_graphs(Figure(), {})
