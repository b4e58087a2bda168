"""qlab.checkpoints: one registry, data/checkpoints.json; every checkpoint loads, is the file the registry
records, and reaches the accuracy it records."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from qlab import checkpoints, data, models, vit
from qlab.attention import Attention
from qlab.capstone import DigitsDSNet

ROOT = checkpoints.DATA_DIR.parent


@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit", "digits_dsnet"])
def test_checkpoint_is_recorded_small_and_reaches_its_accuracy(name):
    info = checkpoints.info(name)
    path = checkpoints.DATA_DIR / info["file"]
    assert path.stat().st_size < 2_000_000
    assert checkpoints.sha256(path) == info["sha256"]
    model = checkpoints.load(name)
    assert not model.training
    x, y = data.digits("test", info["input_size"]).tensors
    correct = int((vit.predict(model, x).argmax(1) == y).sum())
    assert (correct, len(y)) == (info["test_correct"], info["test_total"]) and correct / len(y) > 0.97


def test_the_architectures():
    assert isinstance(checkpoints.load("digits_cnn"), models.DigitsCNN)
    v = checkpoints.load("digits_vit")
    assert checkpoints.info("digits_vit")["kwargs"] == vit.DIGITS_VIT
    assert all(not m.fused_attn for m in v.modules() if isinstance(m, Attention))  # the two matmuls explicit
    assert isinstance(checkpoints.load("digits_dsnet"), DigitsDSNet)


@pytest.mark.parametrize("script, name", [("train_models", "digits_cnn"), ("train_vit", "digits_vit"),
                                          ("train_capstone", "digits_dsnet")])
def test_training_script_recipe_matches_the_registry(script, name):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        mod = __import__(script)
    finally:
        sys.path.pop(0)
    info = checkpoints.info(name)
    recipe = mod.RECIPES[name]
    assert (
        info["arch"] == recipe["arch"] and info["kwargs"] == recipe["kwargs"] and info["input_size"] == recipe["size"]
    )
    assert all(info["recipe"][k] == v for k, v in recipe.items() if k not in ("arch", "kwargs", "size"))


def test_a_corrupted_or_missing_checkpoint_is_refused(tmp_path):
    shutil.copy(checkpoints.DATA_DIR / checkpoints.REGISTRY, tmp_path / checkpoints.REGISTRY)
    blob = bytearray((checkpoints.DATA_DIR / "digits_cnn.pt").read_bytes())
    blob[-100] ^= 1
    (tmp_path / "digits_cnn.pt").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="SHA-256"):
        checkpoints.load("digits_cnn", data_dir=tmp_path)
    (tmp_path / "digits_cnn.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        checkpoints.load("digits_cnn", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoints.json"):
        checkpoints.load("digits_cnn", data_dir=tmp_path / "nowhere")
    assert checkpoints.names(tmp_path) == sorted(json.loads((tmp_path / checkpoints.REGISTRY).read_text()))


def test_unknown_name_is_refused():
    assert checkpoints.names() == ["digits_cnn", "digits_dsnet", "digits_vit"]
    with pytest.raises(ValueError, match="name must be one of"):
        checkpoints.load("resnet50")


def test_registry_holds_what_reproduction_needs():
    reg = json.loads((checkpoints.DATA_DIR / checkpoints.REGISTRY).read_text())
    for name, info in reg.items():
        for key in (
            "file",
            "sha256",
            "arch",
            "kwargs",
            "input_size",
            "test_correct",
            "test_total",
            "recipe",
            "command",
            "made_with",
        ):
            assert key in info, (name, key)


def test_train_cli_check_mode_compares_without_writing(monkeypatch, capsys):
    written = []
    monkeypatch.setattr(checkpoints.pathlib.Path, "write_bytes", lambda self, b: written.append(self))
    entry = dict(checkpoints.info("digits_cnn"))
    rc = checkpoints.train_cli(lambda name: (b"x", entry), {"digits_cnn": {}}, "t", ["--check"])
    assert rc == 0 and written == [] and "reproduced exactly" in capsys.readouterr().out
