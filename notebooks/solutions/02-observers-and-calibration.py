"""Reference solutions for the exercises of 02-observers-and-calibration.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("02.1", percentile_range)``.
"""
import torch


def percentile_range(x, p):
    flat = x.flatten()                              # one range for the whole tensor
    tail = 1 - p / 100                              # torch.quantile takes a fraction, p is in percent
    return torch.quantile(flat, tail).item(), torch.quantile(flat, 1 - tail).item()   # eq. (5)


# A 100x outlier in the *last* batch: MinMax keeps it; the MSE criterion keeps it (one value 100x out weighs more
# than everything's rounding). The moving average moves only c = 1 % towards it (hi ~ 13, ~6 dB lost, not 20);
# the histogram search and the 99.99th percentile cut it off.
WRECKED = {"MinMax", "MSE"}

# Batch 1: [-1.0, 3.0], batch 2: [-0.2, 7.0], c = 0.1, quint8 affine (codes 0..255).
# MinMax: [-1, 7] -> scale 8 / 255, zero point 0 - round(-1 / scale) = 32.
# MovingAverage: lo = -1 + 0.1 (-0.2 + 1) = -0.92, hi = 3 + 0.1 (7 - 3) = 3.4 -> scale 4.32 / 255, zero point 54.
QPARAMS = {"MinMax": (8 / 255, 32), "MovingAverage": (4.32 / 255, 54)}

SOLUTIONS = {
    "02.1": percentile_range,
    "02.2": WRECKED,
    "02.3": QPARAMS,
}
