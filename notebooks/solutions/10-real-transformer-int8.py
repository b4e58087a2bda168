"""Reference solutions for the exercises of 10-real-transformer-int8.ipynb (for instructors).

Check one in the notebook with ``qlab.exercises.check("10.1", smoothing_factors)``.
"""
import torch


def smoothing_factors(act_max, weight_max, alpha):
    # equation (1): s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), one factor per input channel
    return act_max ** alpha / weight_max ** (1 - alpha)


def key_padding_bias(attention_mask):
    # 0 where there is a token, a large negative number where there is padding; one value per key,
    # broadcast over heads and queries: [B, T] -> [B, 1, 1, T]
    keep = attention_mask.bool()[:, None, None, :]
    return torch.where(keep, 0.0, torch.finfo(torch.float32).min)


def true_statements():
    # a, c, g: sections 3, 4 and 7. b: weight-only does no int8 arithmetic; d: the dead pooler tanh, not GELU;
    # e: decomposing breaks the quantizer's aten.linear patterns; f: SmoothQuant is exact in float.
    # h: read from the recording -- section 10's table (static PT2E vs fp32 eager, 1 thread, the padded batch).
    import json
    import pathlib

    bench = json.loads((pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results"
                        / "transformer.json").read_text())
    static = bench["latency"]["1"]["shapes"]["sentences"]["paths"]["PT2E static compiled"]
    return {"a", "c", "g"} | ({"h"} if static["speedup_vs_fp32"] >= 2.0 else set())


SOLUTIONS = {
    "10.1": smoothing_factors,
    "10.2": key_padding_bias,
    "10.3": true_statements(),
}
