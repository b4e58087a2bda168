"""Exercises of ``notebooks/12-*.ipynb`` (inside an int8 kernel); reference answers in
``notebooks/solutions/12-*.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import inside
from ._core import _call, _describe, exercise

__all__ = []

# (in_scale, in_zero_point, out_scale, out_zero_point): fc1's output codes into GELU, GELU's codes into fc2
CASES_12_1 = ((0.05, 128, 0.03, 10), (0.013, 200, 0.02, 0), (0.2, 37, 0.11, 3))


def _variants(s_in, z_in, s_out, z_out) -> dict[str, torch.Tensor]:
    c = torch.arange(256, dtype=torch.float32)
    inv = torch.tensor(1.0 / s_out, dtype=torch.float32)
    x = (c - z_in) * s_in

    def q(y, rnd=torch.round):
        return (rnd(y * inv) + z_out).clamp(0, 255)

    return {
        "no input zero point": q(F.gelu(c * s_in)),
        "no output zero point": (torch.round(F.gelu(x) * inv)).clamp(0, 255),
        "truncated": q(F.gelu(x), torch.trunc),
        "tanh": q(F.gelu(x, approximate="tanh")),
        "unclamped": (torch.round(F.gelu(x) * inv) + z_out) % 256,  # what .to(torch.uint8) makes of it
    }


@exercise("12.1", "the 256-entry GELU table on uint8 codes (equation (3))")
def _check_12_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function gelu_table(in_scale, in_zero_point, out_scale, out_zero_point) -> 256 codes"]
    for s_in, z_in, s_out, z_out in CASES_12_1:
        t, err = _call(fn, s_in, z_in, s_out, z_out)
        if err:
            return [err]
        if not isinstance(t, torch.Tensor) or t.shape != (256,):
            return [f"return one output code per input code 0..255: a tensor of shape (256,), got {_describe(t)}"]
        want = inside.gelu_table(s_in, z_in, s_out, z_out)
        got = t.to(torch.int64)
        if torch.equal(got, want.to(torch.int64)):
            if t.dtype != torch.uint8:
                return [f"the values are right; return them as torch.uint8 codes (got {t.dtype}), the dtype "
                        "int8_linear takes"]
            continue
        v = {k: x.to(torch.int64) for k, x in _variants(s_in, z_in, s_out, z_out).items()}
        hints = {
            "no input zero point": "code c means x = in_scale · (c − in_zero_point): subtract the input zero point",
            "no output zero point": "the output code is round(GELU(x) / out_scale) + out_zero_point: add the output "
            "zero point",
            "truncated": "round to nearest (torch.round, ties to even), don't truncate",
            "tanh": "use the exact GELU (erf, F.gelu's default), not the tanh approximation",
            "unclamped": "clamp the codes to [0, 255]: GELU(x) / out_scale can leave uint8's range",
        }
        for k, msg in hints.items():
            if torch.equal(got, v[k]):
                return [msg]
        bad = int((got != want).sum())
        return [f"{bad} of 256 codes differ from dequantize -> F.gelu -> quantize_per_tensor (in_scale={s_in}, "
                f"in_zero_point={z_in}, out_scale={s_out}, out_zero_point={z_out}); first at code "
                f"{int((got != want).nonzero()[0])}"]
    return []
