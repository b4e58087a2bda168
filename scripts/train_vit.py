#!/usr/bin/env python
"""Train the workbook's small ViT on the digits and write it to data/ (a few minutes on one CPU core).

    .venv/bin/python scripts/train_vit.py            # (re)write data/digits_vit.pt and data/checkpoints.json
    .venv/bin/python scripts/train_vit.py --check    # retrain in memory, compare with data/

The model is timm's own ``VisionTransformer`` (``qlab.vit.DIGITS_VIT``: 32x32
grey digits, 4x4 patches -> 64 patch tokens + a class token, 4 blocks of 4 heads),
so notebook 08 quantizes exactly the ``timm.layers.Attention`` the user report is
about. Seeded and deterministic: one torch thread, deterministic algorithms, a
seeded shuffle and a seeded augmentation (each batch is shifted by a random
whole number of pixels, ``torch.roll``). The same torch version on a CPU with the
same ISA reproduces the checkpoint byte for byte (``--check`` verifies it).
checkpoints.json records the file's SHA-256, the architecture, the test accuracy
measured right after training, the recipe, and the versions and ISA used.
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

from qlab import checkpoints, data, vit  # noqa: E402
from qlab._env import isa_summary  # noqa: E402

RECIPES = {
    "digits_vit": {
        "arch": "VisionTransformer",
        "kwargs": vit.DIGITS_VIT,
        "size": 32,
        "seed": 0,
        "epochs": 60,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.1,
        "label_smoothing": 0.1,
        "max_shift": 4,
    },
}


def train(name: str) -> tuple[bytes, dict]:
    r = RECIPES[name]
    torch.manual_seed(r["seed"])
    model = vit.build(**r["kwargs"])
    train_loader, test_loader = data.loaders(size=r["size"], batch_size=r["batch_size"], seed=r["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=r["lr"], total_steps=r["epochs"] * len(train_loader), pct_start=0.1
    )
    shift_gen = torch.Generator().manual_seed(r["seed"] + 1)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=r["label_smoothing"])
    s = r["max_shift"]
    for epoch in range(r["epochs"]):
        model.train()
        total, n = 0.0, 0
        for x, y in train_loader:
            dy, dx = torch.randint(-s, s + 1, (2,), generator=shift_gen).tolist()
            x = torch.roll(x, (dy, dx), (2, 3))
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        print(f"  {name} epoch {epoch + 1:2d}/{r['epochs']}: train loss {total / n:.4f}", flush=True)
    model.eval()
    x_test, y_test = test_loader.dataset.tensors
    correct = int((vit.predict(model, x_test).argmax(1) == y_test).sum())
    total = len(y_test)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
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
        | {"optimizer": "AdamW", "schedule": "one-cycle", "loss": "cross-entropy", "augmentation": "random roll"},
        "command": "python scripts/train_vit.py",
        "made_with": {
            "torch": torch.__version__,
            "timm": vit.timm_version(),
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
