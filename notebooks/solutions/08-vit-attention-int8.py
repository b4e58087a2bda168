"""Reference solutions for the exercises of 08-vit-attention-int8.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("08.2", qmatmul_by_hand)``.
"""
import torch

# a: mul by a Python float (no type promotion for QUInt8), b: bmm, c: _softmax, d: add, e: layer_norm have no
# QuantizedCPU kernels. gelu and cat have their own; reshape (-> view) and transpose work through composites.
FAILS = {"a", "b", "c", "d", "e"}


def qmatmul_by_hand(a, b, scale, zero_point):
    # on x86, quantized::matmul is a float32 matmul between a dequantize and a quantize
    return torch.quantize_per_tensor(a.dequantize() @ b.dequantize(), scale, zero_point, torch.quint8)


def requant_multiplier(s_q, s_k, s_o, head_dim):
    # value = s_q s_k acc * head_dim ** -0.5; code = value / s_o + z_o
    return s_q * s_k / (s_o * head_dim ** 0.5)


SOLUTIONS = {
    "08.1": FAILS,
    "08.2": qmatmul_by_hand,
    "08.3": requant_multiplier,
}
