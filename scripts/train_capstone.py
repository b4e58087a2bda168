#!/usr/bin/env python
"""Train the capstone's held-out model on the digits and write it to data/ (a few minutes on one CPU core).

    .venv/bin/python scripts/train_capstone.py            # (re)write data/digits_dsnet.pt and data/checkpoints.json
    .venv/bin/python scripts/train_capstone.py --check    # retrain in memory, compare with data/

The model is :class:`qlab.capstone.DigitsDSNet` (inverted residual blocks: 1x1 expand, 3x3 depthwise,
1x1 project, batch-norm, hardswish, residual adds) on the digits upscaled to 32x32. Notebook 13's checker
quantizes it with the learner's function: no earlier notebook saw it. Seeded and deterministic: one torch
thread, deterministic algorithms, a seeded shuffle and a seeded augmentation (each batch shifted by a
random whole number of pixels, ``torch.roll``). The same torch version on a CPU with the same ISA
reproduces the checkpoint byte for byte (``--check`` verifies it).
"""

from __future__ import annotations

import hashlib
import io
import pathlib
import platform
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qlab import checkpoints, data, models  # noqa: E402
from qlab._env import isa_summary  # noqa: E402
from qlab.capstone import DigitsDSNet  # noqa: E402

RECIPES = {
    "digits_dsnet": {
        "arch": "DigitsDSNet",
        "kwargs": {"num_classes": 10, "widths": [24, 48, 96], "blocks": [1, 1, 2], "expand": 2},
        "size": 32,
        "seed": 0,
        "epochs": 12,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "max_shift": 3,
    },
}


def train(name: str) -> tuple[bytes, dict]:
    r = RECIPES[name]
    torch.manual_seed(r["seed"])
    model = DigitsDSNet(**r["kwargs"])
    train_loader, test_loader = data.loaders(size=r["size"], batch_size=r["batch_size"], seed=r["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r["epochs"])
    shift_gen = torch.Generator().manual_seed(r["seed"] + 1)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(r["epochs"]):
        model.train()
        total = n = 0
        for x, y in train_loader:
            dy, dx = (int(v) for v in torch.randint(-r["max_shift"], r["max_shift"] + 1, (2,), generator=shift_gen))
            loss = loss_fn(model(torch.roll(x, (dy, dx), dims=(2, 3))), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
        sched.step()
        print(f"  {name} epoch {epoch + 1:2d}/{r['epochs']}: train loss {total / n:.4f}", flush=True)
    model.eval()
    correct, total = models.evaluate(model, test_loader)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # the archive name inside the zip is fixed by the buffer, not a path
    blob = buf.getvalue()
    info = {
        "file": f"{name}.pt",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "arch": r["arch"],
        "kwargs": r["kwargs"],
        "input_size": r["size"],
        "test_correct": correct,
        "test_total": total,
        "test_accuracy": round(correct / total, 6),
        "recipe": {k: v for k, v in r.items() if k not in ("arch", "kwargs")}
        | {"optimizer": "AdamW", "schedule": "cosine", "loss": "cross-entropy", "augmentation": "random roll"},
        "command": "python scripts/train_capstone.py",
        "made_with": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "isa": isa_summary(),
            "threads": torch.get_num_threads(),
        },
    }
    return blob, info


def main() -> int:
    return checkpoints.train_cli(train, RECIPES, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
