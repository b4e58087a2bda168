"""Reference solutions for the exercises of 04-eager-mode-qat.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("04.1", ste_grad)``.
"""
import torch


def ste_grad(x, scale, zero_point, quant_min, quant_max):
    code = torch.round(x * (1.0 / scale)) + zero_point     # the code before clamping
    return ((code >= quant_min) & (code <= quant_max)).float()   # eq. (2): 1 where not clamped


# disable_observer freezes every fake-quantizer's scale and zero point (activations and weights);
# freeze_bn_stats freezes BatchNorm's running mean/variance. SGD still trains the weights and BN's gamma/beta.
STILL_CHANGING = {"weights", "bn_affine"}

# quant_min=0, quant_max=255 with reduce_range=True -> codes 0..127 (PyTorch halves a custom range).
# scale = (1.8 - (-0.8)) / 127, zero point = 0 - round(-0.8 / scale) = round(39.08) = 39.
QAT_QPARAMS = (2.6 / 127, 39)

SOLUTIONS = {
    "04.1": ste_grad,
    "04.2": STILL_CHANGING,
    "04.3": QAT_QPARAMS,
}
