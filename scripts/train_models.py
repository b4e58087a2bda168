#!/usr/bin/env python
"""Train the workbook's small models and write them to data/ (seconds on a laptop CPU).

    .venv/bin/python scripts/train_models.py            # (re)write data/*.pt and data/checkpoints.json
    .venv/bin/python scripts/train_models.py --check    # retrain in memory, compare with data/

Seeded and deterministic: one torch thread, deterministic algorithms, a seeded
shuffle. The same torch version on a CPU with the same ISA reproduces every
checkpoint byte for byte (`--check` verifies it); another ISA may pick other
float kernels, hence other low bits. checkpoints.json records, per model: the file's
SHA-256, the architecture, the input size, the test accuracy measured right
after training, the recipe, and the versions and ISA used.
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

RECIPES = {
    "digits_cnn": {
        "arch": "DigitsCNN",
        "kwargs": {"num_classes": 10, "widths": [16, 32, 64, 64]},
        "size": 16,
        "seed": 0,
        "epochs": 12,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 1e-4,
    },
}


def train(name: str) -> tuple[bytes, dict]:
    r = RECIPES[name]
    torch.manual_seed(r["seed"])
    model = models._ARCHS[r["arch"]](**r["kwargs"])
    train_loader, test_loader = data.loaders(size=r["size"], batch_size=r["batch_size"], seed=r["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r["epochs"])
    for epoch in range(r["epochs"]):
        loss = models.train_epoch(model, train_loader, opt)
        sched.step()
        print(f"  {name} epoch {epoch + 1:2d}/{r['epochs']}: train loss {loss:.4f}", flush=True)
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
        | {"optimizer": "AdamW", "schedule": "cosine", "loss": "cross-entropy"},
        "command": "python scripts/train_models.py",
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
