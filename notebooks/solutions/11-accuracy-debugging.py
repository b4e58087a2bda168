"""Reference solutions for the exercises of 11-accuracy-debugging.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("11.1", equalization_scales)``.
"""

import torch
import torch.nn.functional as F


def equalization_scales(w1, w2):
    # equation (8): r1 = max|w1| per output channel, r2 = max|w2| per *input* channel (dim 1 of the pointwise weight)
    r1 = w1.abs().flatten(1).amax(1)
    r2 = w2.abs().transpose(0, 1).flatten(1).amax(1)
    s = torch.sqrt(r1 * r2) / r2
    return torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s))  # a dead channel: nothing to balance


def output_shift(conv, x, w_quantized):
    # equation (10): E[conv(x, W~)] - E[conv(x, W)] = E[conv(x, W~ - W)], with the layer's own geometry
    eps = w_quantized - conv.weight
    return F.conv2d(x, eps, None, conv.stride, conv.padding, conv.dilation, conv.groups).mean((0, 2, 3))


def float_layers_for_budget(steps, budget):
    # the first step whose 95% interval lies above the budget: its low end
    for k, step in enumerate(steps):
        if step["measures"]["sqnr_db"]["low"] >= budget:
            return k
    return None


SOLUTIONS = {
    "11.1": equalization_scales,
    "11.2": output_shift,
    "11.3": float_layers_for_budget,
}
