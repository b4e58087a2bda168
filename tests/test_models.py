"""qlab.models: the trained checkpoint loads, is the one models.json records, and scores what it says."""
from __future__ import annotations

import copy
import json
import shutil
import sys

import pytest
import torch
import torch.ao.quantization as tq

from qlab import data, models

ROOT = models.DATA_DIR.parent


@pytest.fixture(scope="module")
def cnn():
    return models.load_pretrained("digits_cnn")


def test_checkpoint_is_recorded_small_and_reaches_its_accuracy(cnn):
    info = models.model_info("digits_cnn")
    path = models.DATA_DIR / info["file"]
    assert path.stat().st_size < 1_000_000
    assert models.sha256(path) == info["sha256"]
    assert isinstance(cnn, models.DigitsCNN) and not cnn.training
    test = data.loaders(size=info["input_size"])[1]
    assert models.evaluate(cnn, test) == (info["test_correct"], info["test_total"])
    assert info["test_correct"] / info["test_total"] > 0.97


def test_training_script_recipe_matches_the_registry():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_models
    finally:
        sys.path.pop(0)
    info = models.model_info("digits_cnn")
    recipe = train_models.RECIPES["digits_cnn"]
    assert info["arch"] == recipe["arch"] and info["kwargs"] == recipe["kwargs"] and info["input_size"] == recipe["size"]
    assert all(info["recipe"][k] == v for k, v in recipe.items() if k not in ("arch", "kwargs"))


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    shutil.copy(models.DATA_DIR / "models.json", tmp_path / "models.json")
    blob = bytearray((models.DATA_DIR / "digits_cnn.pt").read_bytes())
    blob[-100] ^= 1
    (tmp_path / "digits_cnn.pt").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="SHA-256"):
        models.load_pretrained("digits_cnn", data_dir=tmp_path)
    (tmp_path / "digits_cnn.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        models.load_pretrained("digits_cnn", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="models.json"):
        models.load_pretrained("digits_cnn", data_dir=tmp_path / "nowhere")


def test_unknown_name_is_refused():
    assert "digits_cnn" in models.available()
    with pytest.raises(ValueError, match="name must be one of"):
        models.load_pretrained("resnet50")


def test_fuse_spec_fuses_to_the_same_function(cnn):
    x = data.digits("test", 16).tensors[0][:32]
    fused = tq.fuse_modules(copy.deepcopy(cnn), cnn.fuse_spec())
    assert [type(fused.features[int(n[0].split(".")[1])]).__name__ for n in cnn.fuse_spec()] == ["ConvReLU2d"] * 4
    torch.testing.assert_close(fused(x), cnn(x), atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_eager_ptq_keeps_the_accuracy(cnn):
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "x86"
        m = tq.fuse_modules(copy.deepcopy(cnn), cnn.fuse_spec())
        m.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(m, inplace=True)
        for x in data.calibration_batches(128, size=16):
            m(x)
        tq.convert(m, inplace=True)
        correct, total = models.evaluate(m, data.loaders(size=16)[1])
    finally:
        torch.backends.quantized.engine = engine
    assert correct >= models.model_info("digits_cnn")["test_correct"] - 4
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
    loss = models.train_epoch(m, [(batches[0], torch.zeros(16, dtype=torch.long))], opt, on_step=lambda s, _: seen.append(s))
    assert seen == [0] and loss > 0 and m.training
    assert models.median_time(lambda: None, repeats=3, warmup=0) >= 0
    calls = []
    t = models.compare_latency({"a": lambda v: calls.append("a"), "b": lambda v: calls.append("b")}, 1, repeats=2, warmup=1)
    assert set(t) == {"a", "b"} and calls == ["a", "b"] * 3  # interleaved rounds
    with pytest.raises(ValueError, match="repeats"):
        models.compare_latency({"a": print}, repeats=0)


def test_threads_context_restores_the_count():
    before = torch.get_num_threads()
    with models.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="positive int"):
        with models.threads(0):
            pass


def test_model_arguments_are_checked():
    with pytest.raises(ValueError, match="widths"):
        models.DigitsCNN(widths=(8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        models.DigitsCNN(num_classes=1)


def test_registry_is_valid_json_with_what_reproduction_needs():
    reg = json.loads((models.DATA_DIR / "models.json").read_text())
    for name, info in reg.items():
        for key in ("file", "sha256", "arch", "kwargs", "input_size", "test_correct", "test_total", "command", "made_with"):
            assert key in info, (name, key)
