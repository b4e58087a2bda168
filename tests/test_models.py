"""qlab.models: the digits CNN, its fusion list, and the helpers that evaluate, train and inspect it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.ao.quantization as tq

import qlab
from qlab import checkpoints, data, models


@pytest.fixture(scope="module")
def cnn():
    return checkpoints.load("digits_cnn")


def test_fuse_spec_fuses_to_the_same_function(cnn):
    x = data.digits("test", 16).tensors[0][:32]
    fused = tq.fuse_modules(copy.deepcopy(cnn), cnn.fuse_spec())
    assert [type(fused.features[int(n[0].split(".")[1])]).__name__ for n in cnn.fuse_spec()] == ["ConvReLU2d"] * 4
    torch.testing.assert_close(fused(x), cnn(x), atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_eager_ptq_keeps_the_accuracy(cnn):
    with qlab.scoped(engine="x86"):
        m = tq.fuse_modules(copy.deepcopy(cnn), cnn.fuse_spec())
        m.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(m, inplace=True)
        for x in data.calibration_batches(128, size=16):
            m(x)
        tq.convert(m, inplace=True)
        correct, total = models.evaluate(m, data.loaders(size=16)[1])
    assert correct >= checkpoints.info("digits_cnn")["test_correct"] - 4
    assert models.state_dict_bytes(m) < 0.35 * models.state_dict_bytes(cnn)


def test_capture_activations_and_train_epoch(cnn):
    batches = data.calibration_batches(40, size=16, batch_size=16)
    acts = models.capture_activations(cnn, batches, ["features.2", "fc"])
    assert acts["features.2"].shape == (40, 16, 16, 16) and acts["fc"].shape == (40, 10)
    assert float(acts["features.2"].min()) >= 0  # after a ReLU
    with pytest.raises(ValueError, match="submodules"):
        models.capture_activations(cnn, batches, ["nope"])
    m = copy.deepcopy(cnn)
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    seen = []
    loss = models.train_epoch(
        m, [(batches[0], torch.zeros(16, dtype=torch.long))], opt, on_step=lambda s, _: seen.append(s)
    )
    assert seen == [0] and loss > 0 and m.training


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="widths"):
        models.DigitsCNN(widths=(8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        models.DigitsCNN(num_classes=1)
