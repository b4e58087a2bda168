"""The digits CNN and the helpers that train, evaluate and inspect it (used from
``notebooks/02-observers-and-calibration.ipynb`` on).

:class:`DigitsCNN` is a quantization-friendly CNN for :mod:`qlab.data`'s digits:
Conv-BN-ReLU blocks (which eager mode fuses into one quantized conv), module
ReLUs and pools (no functional calls), and a ``QuantStub``/``DeQuantStub`` pair
at the ends, which are identities until ``prepare``/``convert`` give them work::

    x -> quant -> [conv3x3-bn-relu] x2 -> maxpool2 -> conv3x3-bn-relu -> maxpool2
      -> conv3x3-bn-relu -> global avgpool -> flatten -> fc -> dequant -> logits

``qlab.checkpoints.load("digits_cnn")`` loads the trained checkpoint (``scripts/train_models.py``).
"""

from __future__ import annotations

import io
from typing import Callable, Iterable

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

from ._checks import check_int
from ._env import scoped

__all__ = ["DigitsCNN", "evaluate", "train_epoch", "state_dict_bytes", "capture_activations"]


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
        check_int("num_classes", num_classes, 2)
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


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> tuple[int, int]:
    """``(correct, total)`` top-1 predictions of ``model`` over ``loader`` (eval mode, no grad).

    Iterating a ``DataLoader`` draws its worker seed from torch's generator; that happens inside
    :func:`qlab.scoped`, so evaluating never shifts the caller's random numbers."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with scoped():
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
