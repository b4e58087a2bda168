"""The workbook's trained checkpoints, offline: one registry file, ``data/checkpoints.json``.

Each entry names the file in ``data/``, its SHA-256, the architecture and its arguments,
the recipe, the test accuracy measured after training, and the command and versions that
made it (``scripts/train_models.py``, ``scripts/train_vit.py`` and ``scripts/train_capstone.py`` write the
entries through :func:`train_cli`). :func:`load` rebuilds the architecture, checks the file's SHA-256 and
returns the model in eval mode. Used from ``notebooks/02-observers-and-calibration.ipynb`` on.

=================  ==========================================================  =========
name               what                                                        notebooks
=================  ==========================================================  =========
``digits_cnn``     :class:`qlab.models.DigitsCNN` on 16x16 digits               02-06, 09
``digits_vit``     timm ``VisionTransformer`` on 32x32 digits (``fused_attn``   08
                   off, so that attention's two matmuls are explicit)
``digits_dsnet``   :class:`qlab.capstone.DigitsDSNet` on 32x32 digits: the        13
                   capstone's held-out model (``scripts/train_capstone.py``)
=================  ==========================================================  =========
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
from typing import Callable

import torch
from torch import nn

from ._env import scoped

__all__ = ["DATA_DIR", "REGISTRY", "names", "info", "sha256", "load", "train_cli"]

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data"
REGISTRY = "checkpoints.json"


def _build(arch: str, kwargs: dict) -> nn.Module:
    if arch == "DigitsCNN":
        from .models import DigitsCNN

        return DigitsCNN(**kwargs)
    if arch == "VisionTransformer":
        from .vit import build, set_fused_attn

        return set_fused_attn(build(**kwargs), False)
    if arch == "DigitsDSNet":
        from .capstone import DigitsDSNet

        return DigitsDSNet(**kwargs)
    raise ValueError(f"unknown architecture {arch!r} in {REGISTRY}: qlab builds 'DigitsCNN', 'VisionTransformer' "
                     "and 'DigitsDSNet'")


def _registry(data_dir=None) -> dict:
    path = pathlib.Path(data_dir or DATA_DIR) / REGISTRY
    if not path.exists():
        raise FileNotFoundError(f"{REGISTRY} not found in {path.parent}; run scripts/train_models.py")
    return json.loads(path.read_text())


def names(data_dir=None) -> list[str]:
    """The checkpoints listed in ``data/checkpoints.json``."""
    return sorted(_registry(data_dir))


def info(name: str, data_dir=None) -> dict:
    """The registry entry of ``name``: file, SHA-256, architecture and arguments, input size, recorded
    test accuracy, recipe, and the command and versions that produced it."""
    reg = _registry(data_dir)
    if name not in reg:
        raise ValueError(f"name must be one of {sorted(reg)}, got {name!r}")
    return dict(reg[name])


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def load(name: str, data_dir=None) -> nn.Module:
    """The trained model ``name`` from ``data/``, in eval mode, after checking the file's SHA-256."""
    entry = info(name, data_dir)
    path = pathlib.Path(data_dir or DATA_DIR) / entry["file"]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {entry['file']} is missing from the data directory")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"{entry['file']} has SHA-256 {digest[:12]}..., {REGISTRY} records {entry['sha256'][:12]}...")
    with scoped():  # the random initial weights are overwritten: drawing them must not shift the caller's RNG
        model = _build(entry["arch"], entry["kwargs"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def train_cli(train: Callable[[str], tuple[bytes, dict]], recipes: dict, description: str, argv=None) -> int:
    """The command line of the training scripts: train each named recipe (``train(name) -> (state_dict
    bytes, registry entry)``) and write the checkpoint and its entry, or with ``--check`` retrain and
    compare the SHA-256 with the registry (training is seeded and deterministic)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help="retrain and compare with data/ instead of writing")
    ap.add_argument("names", nargs="*", default=sorted(recipes))
    args = ap.parse_args(argv)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with scoped(threads=1):
            return _train_all(train, args)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train_all(train, args) -> int:
    registry_file = DATA_DIR / REGISTRY
    registry = json.loads(registry_file.read_text()) if registry_file.exists() else {}
    ok = True
    for name in args.names:
        blob, entry = train(name)
        print(
            f"{name}: test accuracy {entry['test_correct']}/{entry['test_total']}, {len(blob)} bytes, "
            f"sha256 {entry['sha256'][:16]}"
        )
        if args.check:
            same = registry.get(name, {}).get("sha256") == entry["sha256"]
            print(f"{name}: {'reproduced exactly' if same else 'DIFFERS from data/'}")
            ok &= same
        else:
            (DATA_DIR / entry["file"]).write_bytes(blob)
            registry[name] = entry
    if not args.check:
        registry_file.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if ok else 1
