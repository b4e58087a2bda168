"""The live-figure helper and notebook 01's measurements, without a browser."""

from __future__ import annotations

import ipywidgets as W
import pytest
import torch

import qlab
from qlab.fundamentals import (
    draw_quantization,
    error_vs_bits,
    quantization_error,
    saturation_rate,
    sqnr_db,
    vpmaddubsw,
)
from qlab.widgets import LiveFigure

SIGNAL = torch.sin(torch.linspace(0, 6.28, 200)) * 2 + 0.5


def test_live_figure_redraws_on_control_change():
    lf = LiveFigure(lambda fig, bits: draw_quantization(fig, SIGNAL, bits=bits), {"bits": W.IntSlider(8, min=2, max=8)})
    before_png, before = lf.png(), lf.result
    lf.controls["bits"].value = 3  # fires the observer synchronously
    assert lf.redraws == 2
    assert lf.result["levels"] == 8 and before["levels"] == 256
    assert lf.result["rmse"] > 10 * before["rmse"]
    assert lf.png() != before_png  # the figure itself changed


def test_live_figure_updates_its_display(monkeypatch):
    calls = []

    class Handle:
        def update(self, obj):
            calls.append(obj)

    lf = LiveFigure(lambda fig, k: k, {"k": W.IntSlider(1)})
    lf._handle = Handle()
    lf.controls["k"].value = 5
    assert calls == [lf.figure] and lf.result == 5


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((42, {"a": W.IntSlider()}), TypeError, "draw must be callable"),
        ((lambda f: None, {}), TypeError, "controls must be a non-empty dict"),
        ((lambda f, a: None, {"a": 3}), TypeError, r"controls\['a'\] must be an ipywidgets value widget"),
    ],
)
def test_live_figure_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        LiveFigure(*args)


def test_error_vs_bits_gains_about_6db_per_bit():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    rows = error_vs_bits(x)
    slopes = [b["sqnr_db"] - a["sqnr_db"] for a, b in zip(rows, rows[1:], strict=False)]
    assert all(5.0 < s < 7.0 for s in slopes[2:]), slopes


def test_symmetric_wastes_half_the_range_on_positive_data():
    x = torch.rand(10000, generator=torch.Generator().manual_seed(0))
    asym, sym = quantization_error(x, 8, symmetric=False), quantization_error(x, 8, symmetric=True)
    assert 1.8 < sym["rmse"] / asym["rmse"] < 2.2


def test_vpmaddubsw_saturates_only_at_full_range():
    a = torch.tensor([[255, 255], [127, 127]], dtype=torch.uint8)
    b = torch.tensor([[127, 127], [127, 127]], dtype=torch.int8)
    r, sat = vpmaddubsw(a, b)
    assert r.tolist() == [[32767], [32258]] and sat.tolist() == [[True], [False]]
    assert saturation_rate(127) == 0.0
    assert saturation_rate(255) > 0.01


def test_draw_quantization_zero_point_offset_and_clip():
    from matplotlib.figure import Figure

    base = draw_quantization(Figure(), SIGNAL, 8)
    shifted = draw_quantization(Figure(), SIGNAL, 8, zero_point_offset=20)
    clipped = draw_quantization(Figure(), SIGNAL, 8, clip=0.5)
    assert shifted["clipped_fraction"] > base["clipped_fraction"]
    assert clipped["clipped_fraction"] > 0.2 and clipped["rmse"] > base["rmse"]
    assert base["max_abs_error_lsb"] <= 0.5 + 1e-6


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: sqnr_db(torch.zeros(3), torch.zeros(4)), ValueError, "one shape"),
        (lambda: quantization_error(torch.zeros(3), bits=9), ValueError, r"bits must be an int in \[2, 8\]"),
        (
            lambda: vpmaddubsw(torch.zeros(2, dtype=torch.int8), torch.zeros(2, dtype=torch.int8)),
            TypeError,
            "a_u8 must have dtype torch.uint8",
        ),
        (
            lambda: vpmaddubsw(torch.zeros(3, dtype=torch.uint8), torch.zeros(3, dtype=torch.int8)),
            ValueError,
            "even last dimension",
        ),
        (lambda: saturation_rate(300), ValueError, r"activation_max must be an int in \[1, 255\]"),
        (lambda: draw_quantization(None, SIGNAL, clip=10), ValueError, "clip must be"),
    ],
)
def test_fundamentals_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_setup_reports_environment(capsys):
    with qlab.scoped():  # setup changes threads and seeds on purpose (a notebook's first call); the test restores
        info = qlab.setup(seed=3, threads=1)
        assert torch.get_num_threads() == 1
    out = capsys.readouterr().out
    assert "torch 2." in out and "ISA:" in out and "quantized engines:" in out
    assert "x86" in info.engines or "fbgemm" in info.engines
