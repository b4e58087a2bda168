"""qlab.data: the bundled scikit-learn digits, split, normalised and batched deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qlab import data


def test_split_is_stratified_disjoint_and_complete():
    train, test = data.split_indices()
    assert len(train) == 1433 and len(test) == 364
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    y = data._raw()[1]
    counts = np.bincount(y[test], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # every 5th image of every class
    a, b = data.split_indices()
    assert np.array_equal(a, train) and np.array_equal(b, test)


def test_mean_and_std_constants_are_the_train_statistics():
    assert (data.MEAN, data.STD) == data._train_stats()


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shapes_and_normalisation(size):
    ds = data.digits("train", size)
    x, y = ds.tensors
    assert x.shape == (1433, 1, size, size) and x.dtype == torch.float32
    assert y.shape == (1433,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    if size == 8:  # normalised with the train statistics: mean 0, std 1 exactly (float rounding)
        assert abs(float(x.double().mean())) < 1e-5 and abs(float(x.double().std(unbiased=False)) - 1) < 1e-5
    raw = data.digits("test", size, normalize=False).tensors[0]
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0
    assert len(data.digits("test", size)) == 364 and len(data.digits("all", size)) == 1797


def test_upsampling_preserves_the_mean_image():
    small = data.digits("test", 8, normalize=False).tensors[0]
    big = data.digits("test", 16, normalize=False).tensors[0]
    assert torch.allclose(torch.nn.functional.avg_pool2d(big, 2).mean(), small.mean(), atol=2e-3)


def test_loaders_are_deterministic():
    a, test_a = data.loaders(size=8, batch_size=100, seed=3)
    b, test_b = data.loaders(size=8, batch_size=100, seed=3)
    for (xa, ya), (xb, yb) in zip(a, b, strict=False):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first_a = next(iter(a))[1]
    assert not torch.equal(first_a, data.digits("train").tensors[1][:100])  # shuffled
    assert torch.equal(next(iter(data.loaders(seed=4)[0]))[1], next(iter(data.loaders(seed=4)[0]))[1])
    xt, yt = next(iter(test_a))
    assert torch.equal(yt, data.digits("test").tensors[1][: len(yt)])  # test split in order


def test_calibration_batches():
    batches = data.calibration_batches(70, size=16, batch_size=32)
    assert [len(b) for b in batches] == [32, 32, 6]
    assert torch.equal(torch.cat(batches), data.digits("train", 16).tensors[0][:70])


@pytest.mark.parametrize(
    "call,exc,msg",
    [
        (lambda: data.digits("val"), ValueError, "split must be"),
        (lambda: data.digits("train", 7), ValueError, r"size must be an int in \[8, 64\], got 7"),
        (lambda: data.digits("train", 16.0), TypeError, "size must be an int in .*, got float 16.0"),
        (lambda: data.loaders(batch_size=0), ValueError, "batch_size must be an int >= 1"),
        (lambda: data.calibration_batches(0), ValueError, "n_images must be"),
    ],
)
def test_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()
