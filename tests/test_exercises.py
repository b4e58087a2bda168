"""Every exercise checker accepts its reference solution and gives specific feedback on typical wrong answers."""
from __future__ import annotations

import pytest
import torch

from qlab import exercises

WRONG = {
    "01.1": [
        (lambda lo, hi: ((hi - lo) / 255, -lo / ((hi - lo) / 255)), "must be an integer code"),
        (lambda lo, hi: ((hi - lo) / 255, round(-lo / ((hi - lo) / 255))), "widen the range to contain 0"),
        (lambda lo, hi: ((max(hi, 0) - min(lo, 0)) / 256, 0), "divide by qmax - qmin = 255, not 256"),
        (lambda lo, hi: ((max(hi, 0) - min(lo, 0)) / 255, 0), "the zero point for"),
        (lambda lo, hi: 1 / 0, "raised ZeroDivisionError"),
        (lambda lo, hi: 0.1, "return a pair"),
    ],
    "01.2": [
        (lambda x, s, z: torch.round(x / s) + z, "clamp to [0, 255]"),
        (lambda x, s, z: torch.clamp(torch.floor(x / s + 0.5) + z, 0, 255), "round half to even"),
        (lambda x, s, z: torch.clamp(torch.round(x / s), 0, 255), "add the zero point"),
        (lambda x, s, z: torch.clamp(torch.round(x * s) + z, 0, 255), "divide by the scale"),
        (lambda x, s, z: [1, 2], "return a tensor"),
    ],
    "01.3": [(1, "axis 1 is the input channel"), ("out", "answer with the axis")],
    "02.1": [
        (lambda x, p: (x.min(), x.max()), "that is MinMax's range"),
        (lambda x, p: (torch.quantile(x.flatten(), p / 100), torch.quantile(x.flatten(), 1 - p / 100)), "swapped"),
        (lambda x, p: (-torch.quantile(x.abs().flatten(), p / 100), torch.quantile(x.abs().flatten(), p / 100)),
         "percentile of |x|"),
        (lambda x, p: (torch.quantile(x.flatten(), p / 100), torch.quantile(x.flatten(), p / 100)),
         "lo is the (100 - p)-th percentile"),
        (lambda x, p: (torch.quantile(x.flatten(), 1 - p), torch.quantile(x.flatten(), p)), "not a percentage"),
        (lambda x, p: (torch.quantile(x.flatten(), 0.001), torch.quantile(x.flatten(), 0.999)), "for p = 99.0"),
        (lambda x, p: x.max(), "answer with a pair"),
    ],
    "02.2": [
        ({"MinMax", "MovingAverage", "MSE"}, "not MovingAverage: in the last batch"),
        ({"MinMax"}, "missing MSE"),
        ({"MinMax", "MSE", "Histogram"}, "not Histogram"),
        ({"MinMax", "MSE", "Percentile"}, "not Percentile"),
        ({"minmax"}, "unknown observer name"),
        ("MinMax", "answer with a set"),
    ],
    "02.3": [
        ({"MinMax": (7.2 / 255, 1), "MovingAverage": (4.32 / 255, 54)}, "not the last batch's"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": ((6.6 + 0.28) / 255, 10)}, "c weights the *new* batch"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": (5.6 / 255, 27)}, "plain mean"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": (8 / 255, 32)}, "that is MinMax's range"),
        ({"MinMax": (8 / 256, 32), "MovingAverage": (4.32 / 255, 54)}, "not 256"),
        ({"MinMax": (8 / 255, -32), "MovingAverage": (4.32 / 255, 54)}, "sign wrong"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": (4.32 / 255, 55)}, "MovingAverage: the zero point"),
        ((8 / 255, 32), "answer with a dict"),
    ],
    "03.1": [
        ([["features.0", "features.1"], ["features.3", "features.4"], ["features.7", "features.8"],
          ["features.11", "features.12"]], "fuse the ReLU too"),
        ([["features.0", "features.1", "features.2"], ["features.3", "features.4", "features.5"],
          ["features.6", "features.7", "features.8"], ["features.10", "features.11", "features.12"]],
         "features.6 is a MaxPool2d"),
        ([["features.0", "features.1", "features.2"], ["fc"]], "fc is followed by the DeQuantStub"),
        ([["features.2", "features.1", "features.0"]], "data-flow order"),
        ([["0", "1", "2"]], "dotted names"),
        ([["features.0", "features.1", "features.2"], ["features.3", "features.4", "features.5"]], "missing"),
        (["features.0", "features.1", "features.2"], "one list per group"),
    ],
    "03.2": [
        (({"x86", "fbgemm", "onednn"}, "b"), "not onednn: onednn keeps codes 0..255"),
        (({"fbgemm"}, "b"), "missing x86"),
        (({"x86", "fbgemm", "qnnpack"}, "b"), "not qnnpack"),
        (({"x86", "fbgemm"}, "a"), "vpmaddubsw's int16 pair sum"),
        (({"x86", "fbgemm"}, "d"), "see the same ReLUs"),
        (({"avx2"}, "b"), "unknown engine"),
        ("x86", "answer with a pair"),
    ],
    "03.3": [
        (lambda self, x: self.dequant(self.fc(self.flatten(self.relu(self.conv(x))))), "call self.quant(x) first"),
        (lambda self, x: self.fc(self.flatten(self.relu(self.conv(self.quant(x))))), "call self.dequant"),
        (lambda self, x: self.fc(self.dequant(self.flatten(self.relu(self.conv(self.quant(x)))))),
         "self.dequant must come last, after self.fc"),
        (lambda self, x: self.dequant(self.fc(self.flatten(self.relu(self.quant(self.conv(x)))))),
         "self.quant must come before self.conv"),
        (lambda self, x: self.dequant(self.fc(self.flatten(self.conv(self.quant(x))))), "never calls self.relu"),
        (lambda self, x: self.dequant(self.fc(self.flatten(self.relu(self.conv(self.quant(x))) + 1))),
         "after prepare/convert your forward fails"),
    ],
    "04.1": [
        (lambda x, s, z, qmin, qmax: torch.ones_like(x), "the gradient is 0 where the code was clamped"),
        (lambda x, s, z, qmin, qmax: torch.zeros_like(x), "rounding's true gradient is 0"),
        (lambda x, s, z, qmin, qmax: ((x >= s * (qmin - z)) & (x <= s * (qmax - z))).float(),
         "tests the rounded code, not x"),
        (lambda x, s, z, qmin, qmax: ((torch.round(x / s) + z > qmin) & (torch.round(x / s) + z < qmax)).float(),
         "qmin and qmax are valid codes"),
        (lambda x, s, z, qmin, qmax: ((torch.round(x / s) >= qmin) & (torch.round(x / s) <= qmax)).float(),
         "add the zero point"),
        (lambda x, s, z, qmin, qmax: [1, 0], "one gradient per element"),
    ],
    "04.2": [
        ({"weights"}, "missing bn_affine"),
        ({"weights", "bn_affine", "weight_qparams"}, "not weight_qparams"),
        ({"weights", "bn_affine", "bn_running_stats"}, "not bn_running_stats"),
        ({"weights", "bn_affine", "activation_qparams"}, "not activation_qparams"),
        ({"bn_affine"}, "missing weights"),
        ({"gamma"}, "unknown name"),
    ],
    "04.3": [
        ((2.6 / 255, 78), "reduce_range=True halves the custom range"),
        ((2.6 / 128, 39), "not 128"),
        ((2.6 / 127, 40), "the zero point is"),
        ((0.1, 39), "the scale should be"),
        (None, "answer with a pair"),
    ],
    "09.1": [
        ((0.8 / 127.5, 0.8 / 255), "swapped"),
        ((0.8 / 127.5, 0.8 / 127.5), "falls back to affine"),
        ((0.8 / 255, 0.8 / 127), "not 127"),
        (0.5, "answer with a pair"),
    ],
    "09.2": [
        (lambda i: i, "that is the fake path"),
        (lambda i: (254 * i) // 255, "don't truncate"),
        (lambda i: round(i * 255 / 254), "the converted model outputs"),
    ],
}


@pytest.mark.parametrize("exercise", sorted(exercises.exercises()))
def test_reference_solution_passes(exercise):
    fb = exercises.check(exercise, exercises.solution(exercise))
    assert fb.ok, str(fb)
    assert str(fb).endswith("correct.")


@pytest.mark.parametrize("exercise", sorted(exercises.exercises()))
def test_every_exercise_has_wrong_answers_tested(exercise):
    assert WRONG.get(exercise), f"add typical wrong answers for {exercise} to WRONG"


@pytest.mark.parametrize("exercise, answer, message", [(e, a, m) for e, items in WRONG.items() for a, m in items])
def test_wrong_answers_get_specific_feedback(exercise, answer, message):
    fb = exercises.check(exercise, answer)
    assert not fb.ok
    assert message in str(fb), str(fb)


def test_unanswered_exercise_says_so():
    def todo(lo, hi):
        raise NotImplementedError

    assert "not answered yet" in str(exercises.check("01.1", todo))


def test_02_2_answer_holds_on_the_notebooks_activations():
    """02.2's answer, executed on notebook 02's data (features.13 of the digits CNN, 4 batches of 32 images):
    a 100x outlier in the last batch costs MinMax and MSE > 20 dB, the moving average about one bit, the others little."""
    from qlab import data, models
    from qlab import observers as qobs

    cnn = models.load_pretrained("digits_cnn")
    calib = models.capture_activations(cnn, data.calibration_batches(128, size=16), ["features.13"])["features.13"]
    x_test, _ = data.digits("test", size=16).tensors
    heldout = models.capture_activations(cnn, [x_test], ["features.13"])["features.13"]
    obs = {"MinMax": qobs.MinMaxObserver, "MovingAverage": qobs.MovingAverageMinMaxObserver,
           "Histogram": qobs.HistogramObserver, "Percentile": qobs.PercentileObserver, "MSE": qobs.MSEObserver}
    assert set(obs) == set(exercises.OBSERVERS_02)
    base = qobs.compare_observers(obs, torch.split(calib, 32), heldout)
    spiked = calib.clone()
    spiked.view(-1)[-1] = 100 * float(calib.abs().max())
    rep = qobs.compare_observers(obs, torch.split(spiked, 32), heldout)
    lost = {n: base[n]["sqnr_db"] - rep[n]["sqnr_db"] for n in obs}
    assert {n for n, v in lost.items() if v > 20} == exercises.solution("02.2"), lost
    assert 3 < lost["MovingAverage"] < 10 and 12 < rep["MovingAverage"]["hi"] < 14, (lost, rep["MovingAverage"]["hi"])
    assert max(abs(lost["Histogram"]), abs(lost["Percentile"])) < 1.5, lost


def test_04_2_truth_is_measured():
    assert exercises._frozen_qat_step() == exercises.solution("04.2")


def test_unknown_exercise_is_named():
    with pytest.raises(ValueError, match="exercise must be one of"):
        exercises.check("99.9", None)
