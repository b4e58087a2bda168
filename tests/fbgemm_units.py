"""Whether FBGEMM's int8 products saturate on this CPU, for the tests that compare with it bit for bit.

FBGEMM (the ``fbgemm`` engine; the ``x86`` engine's linears, and its convolutions without AVX-512 VNNI) multiplies
uint8 x int8 with AVX2 ``vpmaddubsw`` when the CPU has no AVX-512 VNNI: each pair of products is added into a
saturating int16, and 255 * 127 * 2 > 32767. PyTorch's ``fbgemm`` and ``x86`` qconfigs therefore use 7-bit activations
(``reduce_range=True``). On such a CPU these tests give FBGEMM 7-bit activation codes, as those qconfigs would;
``test_int_conv`` and notebook 09 show the saturation itself, modelled exactly.
"""
from __future__ import annotations

import torch

from qlab._env import int8_units

SATURATES = int8_units()["fbgemm"] == "avx2"


def fbgemm_safe(qx: torch.Tensor) -> torch.Tensor:
    """A quint8 tensor as FBGEMM multiplies it exactly on this CPU: unchanged with VNNI, else its codes and zero
    point halved (7 bits, the range ``reduce_range=True`` gives)."""
    if not SATURATES:
        return qx
    return torch._make_per_tensor_quantized_tensor(qx.int_repr() // 2, qx.q_scale(), qx.q_zero_point() // 2)
