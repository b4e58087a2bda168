"""The figures of notebooks 02-04 (qlab.observers.figures, qlab.flows): each draws on a Figure and returns what it
shows."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

import qlab.observers as qobs
from qlab import flows
from qlab.observers import figures
from qlab.widgets import LiveFigure

matplotlib.use("Agg")

OBS = {
    "MinMax": qobs.MinMaxObserver,
    "Percentile": qobs.PercentileObserver.with_args(percentile=99.0),
    "MSE": qobs.MSEObserver,
}


def _acts(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, 4, 5, 5, generator=g))


def test_observer_ranges_returns_the_ranges_it_draws():
    x = _acts()
    report = qobs.compare_observers({**OBS, "PerChannel": qobs.PerChannelMinMaxObserver.with_args(ch_axis=1)}, [x], x)
    fig = Figure()
    shown = figures.draw_ranges(fig, x, report, title="t")
    assert set(shown["ranges"]) == set(OBS)  # per-channel entries are not drawn as one range
    assert shown["ranges"]["MinMax"] == (0.0, float(x.max())) and shown["max"] == float(x.max())
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == list(OBS)


def test_observer_explorer_outlier_images_and_bits():
    calib, held = _acts(64, 0), _acts(32, 1)
    base = figures.draw_explorer(Figure(), calibration=calib, heldout=held, observers=OBS, n_images=64)
    spiked = figures.draw_explorer(Figure(), calibration=calib, heldout=held, observers=OBS, outlier=100.0, n_images=64)
    assert spiked["outlier_value"] == pytest.approx(100 * float(calib.max()))
    assert spiked["report"]["MinMax"]["hi"] == pytest.approx(spiked["outlier_value"])
    assert spiked["report"]["MinMax"]["sqnr_db"] < base["report"]["MinMax"]["sqnr_db"] - 20
    assert spiked["report"]["Percentile"]["hi"] < 10
    assert torch.equal(calib, _acts(64, 0))  # the outlier went into a copy
    few = figures.draw_explorer(Figure(), calibration=calib, heldout=held, observers=OBS, n_images=4)
    assert few["report"]["MinMax"]["hi"] == float(calib[:4].max())
    four = figures.draw_explorer(Figure(), calibration=calib, heldout=held, observers=OBS, n_images=64, bits=4)
    assert four["report"]["MinMax"]["sqnr_db"] < base["report"]["MinMax"]["sqnr_db"] - 15
    assert float(four["report"]["MinMax"]["scale"]) == pytest.approx(
        float(base["report"]["MinMax"]["scale"]) * 255 / 15
    )


def test_observer_explorer_in_a_live_figure_redraws():
    import ipywidgets as W

    calib, held = _acts(64, 0), _acts(32, 1)
    live = LiveFigure(
        lambda fig, outlier: figures.draw_explorer(
            fig, calibration=calib, heldout=held, observers=OBS, outlier=outlier, n_images=64
        ),
        {"outlier": W.SelectionSlider(options=[0, 100], value=0)},
    )
    before = live.result["report"]["MinMax"]["hi"]
    live.controls["outlier"].value = 100
    assert live.redraws == 2 and live.result["report"]["MinMax"]["hi"] > 50 * before
    assert live.png()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "kwargs,msg",
    [({"n_images": 0}, "n_images"), ({"bits": 9}, "bits"), ({"outlier": -1.0}, "outlier")],
)
def test_observer_explorer_checks_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        figures.draw_explorer(
            Figure(), calibration=_acts(8), heldout=_acts(8), observers=OBS, **{"n_images": 8, **kwargs}
        )


def test_channel_ranges():
    lo, hi = torch.tensor([-1.0, -0.5, -0.1]), torch.tensor([1.0, 0.4, 0.1])
    shown = figures.draw_channel_ranges(Figure(), lo, hi)
    assert shown["channels"] == 3 and shown["per_tensor"] == (-1.0, 1.0)
    assert shown["narrowest_fraction"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="1-D"):
        figures.draw_channel_ranges(Figure(), lo, hi[:2])


def test_engine_comparison():
    rows = [
        {"engine": "x86", "accuracy": 0.98, "fp32_accuracy": 0.99, "size_ratio": 0.3, "latency_ratio": 0.2},
        {"engine": "qnnpack", "accuracy": 0.99, "fp32_accuracy": 0.99, "size_ratio": 0.28, "latency_ratio": 0.9},
    ]
    fig = Figure()
    assert flows.draw_engines(fig, rows) == {"fastest": "x86", "best_accuracy": "qnnpack"}
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="at least one engine"):
        flows.draw_engines(Figure(), [])


def test_fake_quant_ranges():
    history = {"a": [(0.0, 1.0), (0.0, 2.0), (0.0, 2.0)], "b": [(-1.0, 1.0)] * 3}
    fig = Figure()
    shown = flows.draw_fake_quant_ranges(fig, history, freeze_at=2, title="t")
    assert shown == {
        "steps": 3,
        "start": {"a": (0.0, 1.0), "b": (-1.0, 1.0)},
        "end": {"a": (0.0, 2.0), "b": (-1.0, 1.0)},
    }
    assert len(fig.axes) == 4  # hi and lo rows, one column per module
    with pytest.raises(ValueError, match="pairs"):
        flows.draw_fake_quant_ranges(Figure(), {"a": [1.0, 2.0]})


def test_accuracy_bars():
    shown = flows.draw_accuracy(Figure(), {"fp32": 0.99, "PTQ": 0.95, "QAT": 0.98})
    assert shown == {"best": "fp32", "worst": "PTQ"}


def test_figures_only():
    with pytest.raises(TypeError, match="matplotlib.figure.Figure"):
        flows.draw_accuracy(None, {"a": 1.0})
