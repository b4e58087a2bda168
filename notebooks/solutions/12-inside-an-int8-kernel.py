"""Reference solutions for the exercises of 12-inside-an-int8-kernel.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("12.1", gelu_table)``.
"""

import torch
import torch.nn.functional as F


def gelu_table(in_scale, in_zero_point, out_scale, out_zero_point):
    # equation (3): dequantize every code, GELU, quantize as PyTorch does (multiply by float32 1/scale, round half to
    # even, add the zero point, clamp)
    x = (torch.arange(256, dtype=torch.float32) - in_zero_point) * in_scale
    inv = torch.tensor(1.0 / out_scale, dtype=torch.float32)
    return (torch.round(F.gelu(x) * inv) + out_zero_point).clamp(0, 255).to(torch.uint8)


SOLUTIONS = {"12.1": gelu_table}
