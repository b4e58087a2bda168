"""Real data, offline: scikit-learn's handwritten digits (used from ``notebooks/02-observers-and-calibration.ipynb``
on).

``sklearn.datasets.load_digits`` ships inside scikit-learn (no download): 1797
grey-scale 8x8 images of the digits 0-9, pixel values 0..16. Here:

* **Split** (deterministic, no RNG): within each class, every 5th image in file
  order (the 1st, 6th, ...) is a test image -- 364 test, 1433 train, every class in both.
* **Pixels**: ``x / 16`` in ``[0, 1]``; optionally resized to ``size x size``
  with bilinear interpolation (``align_corners=False``), e.g. 16 or 32 for a
  ViT with patch size 4; then normalised::

      (1)  x_norm = (x - MEAN) / STD

  with ``MEAN``/``STD`` the pixel mean and standard deviation of the 8x8 train split.
* **Loaders**: the train loader shuffles with its own seeded generator, so the
  batch order is the same on every run.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ._checks import check_int
from ._env import scoped

__all__ = ["MEAN", "STD", "NUM_CLASSES", "split_indices", "digits", "loaders", "calibration_batches"]

NUM_CLASSES = 10
_TEST_EVERY = 5


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    with scoped():  # importing scikit-learn (its progress bars import rich) draws from Python's generator
        from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` into the 1797 images: per class, every 5th image is test."""
    _, y = _raw()
    rank = np.zeros_like(y)  # rank of each image within its class, in file order
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(len(members))
    test = rank % _TEST_EVERY == 0
    return np.flatnonzero(~test), np.flatnonzero(test)


def _train_stats() -> tuple[float, float]:
    """Mean and standard deviation of the train pixels in [0, 1]: how MEAN and STD were computed."""
    x, _ = _raw()
    train = x[split_indices()[0]].astype(np.float64)
    return float(train.mean()), float(train.std())


# _train_stats(), written out so that importing qlab.data stays cheap (tests/test_data.py checks them).
MEAN, STD = 0.3054160033583391, 0.3762522201774761


def _check_size(size):
    return check_int("size", size, 8, 64)  # 8 is the original resolution


def digits(split: str = "train", size: int = 8, normalize: bool = True) -> TensorDataset:
    """The digits ``split`` ('train', 'test' or 'all') as a ``TensorDataset`` of
    ``x`` float32 ``[N, 1, size, size]`` and ``y`` int64 ``[N]``."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    _check_size(size)
    x, y = _raw()
    if split != "all":
        idx = split_indices()[0 if split == "train" else 1]
        x, y = x[idx], y[idx]
    xt = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
    if size != 8:
        xt = torch.nn.functional.interpolate(xt, size=(size, size), mode="bilinear", align_corners=False)
    if normalize:
        xt = (xt - MEAN) / STD
    return TensorDataset(xt.contiguous(), torch.from_numpy(y))


def loaders(size: int = 8, batch_size: int = 64, seed: int = 0, test_batch_size: int = 512):
    """``(train_loader, test_loader)``: shuffled train batches (seeded), the test split in order."""
    for name, v in (("batch_size", batch_size), ("test_batch_size", test_batch_size)):
        check_int(name, v, 1)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(digits("train", size), batch_size=batch_size, shuffle=True, generator=g)
    test = DataLoader(digits("test", size), batch_size=test_batch_size, shuffle=False)
    return train, test


def calibration_batches(n_images: int = 256, size: int = 8, batch_size: int = 32) -> list[torch.Tensor]:
    """The first ``n_images`` train images (fixed order), as a list of input batches for calibration."""
    check_int("n_images", n_images, 1)
    check_int("batch_size", batch_size, 1)
    x = digits("train", size).tensors[0][:n_images]
    return list(torch.split(x, batch_size))
