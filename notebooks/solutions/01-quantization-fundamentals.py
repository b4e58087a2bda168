"""Reference solutions for the exercises of 01-quantization-fundamentals.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("01.1", my_qparams)``.
"""
import torch


def my_qparams(lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)          # the range must contain 0
    scale = (hi - lo) / 255                       # eq. (3): 255 steps between codes 0..255
    scale = max(scale, torch.finfo(torch.float32).eps)
    zero_point = min(max(0 - round(lo / scale), 0), 255)
    return scale, zero_point


def my_quantize(x, scale, zero_point):
    return torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, 0, 255).to(torch.uint8)   # eq. (2)


SOLUTIONS = {
    "01.1": my_qparams,
    "01.2": my_quantize,
    "01.3": 0,   # output channels: each one is a separate dot product
}
