"""Small trained models, loaded offline from ``data/`` (used from ``notebooks/02-observers-and-calibration.ipynb`` on).

:class:`DigitsCNN` is a quantization-friendly CNN for :mod:`qlab.data`'s digits:
Conv-BN-ReLU blocks (which eager mode fuses into one quantized conv), module
ReLUs and pools (no functional calls), and a ``QuantStub``/``DeQuantStub`` pair
at the ends, which are identities until ``prepare``/``convert`` give them work::

    x -> quant -> [conv3x3-bn-relu] x2 -> maxpool2 -> conv3x3-bn-relu -> maxpool2
      -> conv3x3-bn-relu -> global avgpool -> flatten -> fc -> dequant -> logits

:func:`load_pretrained` reads a checkpoint written by ``scripts/train_models.py``
and checks it against ``data/models.json`` (its SHA-256 and how it was made).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pathlib
import time
from typing import Callable, Iterable

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

__all__ = [
    "DATA_DIR",
    "DigitsCNN",
    "available",
    "model_info",
    "sha256",
    "load_pretrained",
    "evaluate",
    "train_epoch",
    "state_dict_bytes",
    "capture_activations",
    "median_time",
    "compare_latency",
    "threads",
]

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data"


class DigitsCNN(nn.Module):
    """Four Conv-BN-ReLU blocks and a linear classifier (see the module docstring).

    ``widths``: output channels of the four convolutions. Works for any input
    size divisible by 4 (8, 16, 32); the released checkpoint is trained on 16x16.
    """

    def __init__(self, num_classes: int = 10, widths: Iterable[int] = (16, 32, 64, 64)):
        super().__init__()
        w = list(widths)
        if len(w) != 4 or not all(isinstance(c, int) and c > 0 for c in w):
            raise ValueError(f"widths must be four positive ints, got {widths!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.quant = QuantStub()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, w[0]),  # features.0-2
            *block(w[0], w[1]),  # features.3-5
            nn.MaxPool2d(2),  # features.6
            *block(w[1], w[2]),  # features.7-9
            nn.MaxPool2d(2),  # features.10
            *block(w[2], w[3]),  # features.11-13
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w[3], num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.features(x)
        x = self.flatten(self.pool(x))
        return self.dequant(self.fc(x))

    def fuse_spec(self) -> list[list[str]]:
        """The ``[conv, bn, relu]`` module names ``torch.ao.quantization.fuse_modules`` should fuse."""
        convs = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        return [[f"features.{i}", f"features.{i + 1}", f"features.{i + 2}"] for i in convs]


_ARCHS: dict[str, Callable[..., nn.Module]] = {"DigitsCNN": DigitsCNN}


def _registry(data_dir=None) -> dict:
    path = pathlib.Path(data_dir or DATA_DIR) / "models.json"
    if not path.exists():
        raise FileNotFoundError(f"{path.name} not found in the data directory; run scripts/train_models.py")
    return json.loads(path.read_text())


def available(data_dir=None) -> list[str]:
    """Names of the checkpoints listed in ``data/models.json``."""
    return sorted(_registry(data_dir))


def model_info(name: str, data_dir=None) -> dict:
    """The ``data/models.json`` entry of ``name``: file, SHA-256, architecture, input size,
    recorded test accuracy, and the command and versions that produced it."""
    reg = _registry(data_dir)
    if name not in reg:
        raise ValueError(f"name must be one of {sorted(reg)}, got {name!r}")
    return dict(reg[name])


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def load_pretrained(name: str = "digits_cnn", data_dir=None) -> nn.Module:
    """The trained model ``name`` from ``data/``, in eval mode, after checking the file's SHA-256."""
    info = model_info(name, data_dir)
    path = pathlib.Path(data_dir or DATA_DIR) / info["file"]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {info['file']} is missing from the data directory")
    digest = sha256(path)
    if digest != info["sha256"]:
        raise ValueError(f"{info['file']} has SHA-256 {digest[:12]}..., models.json records {info['sha256'][:12]}...")
    model = _ARCHS[info["arch"]](**info["kwargs"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> tuple[int, int]:
    """``(correct, total)`` top-1 predictions of ``model`` over ``loader`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct, total


def train_epoch(model: nn.Module, loader, optimizer, loss_fn=None, on_step: Callable | None = None) -> float:
    """One pass over ``loader`` with cross-entropy; returns the mean loss.
    ``on_step(step, model)`` is called after every optimizer step (to record something)."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    total, n = 0.0, 0
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
        if on_step is not None:
            on_step(step, model)
    return total / max(n, 1)


def state_dict_bytes(model: nn.Module) -> int:
    """Size of ``model.state_dict()`` as ``torch.save`` writes it (quantized models pack their weights)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@torch.no_grad()
def capture_activations(model: nn.Module, batches, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The outputs of the submodules ``names`` for every batch, concatenated along dim 0."""
    names = list(names)
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            raise ValueError(f"names must be submodules of the model, got {n!r}")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach())) for n in names]
    was_training = model.training
    try:
        model.eval()
        for x in batches:
            model(x[0] if isinstance(x, (tuple, list)) else x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def median_time(fn: Callable, *args, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn(*args)`` in seconds (after ``warmup`` calls). Timings vary:
    compare ratios measured in the same run, never absolute numbers across machines."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def compare_latency(fns: dict[str, Callable], *args, repeats: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median wall time in seconds of each ``fns[name](*args)``, measured in interleaved rounds
    (one call of each per round), so that a busy machine slows all of them alike and
    their ratios stay meaningful."""
    if not fns:
        raise ValueError("fns must hold at least one callable")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn(*args)
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(*args)
                times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


@contextlib.contextmanager
def threads(n: int):
    """Run the block with ``n`` torch threads, then restore the previous count.

    One thread makes float reductions run in one fixed order (results independent of
    the machine's core count) and keeps timings steady on a busy machine, where
    OpenMP threads waiting for each other slow everything down.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
