"""Exercises of ``notebooks/10-*.ipynb`` (a real transformer in int8); reference answers in
``notebooks/solutions/10-*.py``."""

from __future__ import annotations

import torch

from ._core import _call, _describe, _letter_set, exercise

__all__ = ["STATEMENTS_10", "statements_truth_10"]


def _maxima_10():
    g = torch.Generator().manual_seed(10)
    act = torch.rand(16, generator=g) * 2 + 0.1
    act[3] = 30.0  # an outlier channel, like hidden channel 99
    return act, torch.rand(16, generator=g) * 0.5 + 0.05


@exercise("10.1", "SmoothQuant's per-channel smoothing factors")
def _check_10_1(fn) -> list[str]:
    from ..smoothquant import smoothing_factors

    if not callable(fn):
        return ["answer with a function smoothing_factors(act_max, weight_max, alpha) -> tensor of factors"]
    act, w = _maxima_10()
    for alpha in (0.5, 0.8):
        got, err = _call(fn, act.clone(), w.clone(), alpha)
        if err:
            return [err]
        want = smoothing_factors(act, w, alpha)
        if not isinstance(got, torch.Tensor):
            try:
                got = torch.as_tensor(got, dtype=torch.float32)
            except Exception:
                return [f"return a tensor of {len(act)} factors (one per input channel), got {_describe(got)}"]
        if got.numel() == 1 and want.numel() > 1:
            return [f"one factor per input channel: return a tensor of shape ({len(act)},), not a single number"]
        if got.shape != want.shape:
            return [f"return one factor per input channel, shape ({len(act)},), got {_describe(got)}"]
        got = got.double()
        if not bool(torch.isfinite(got).all() and (got > 0).all()):
            return ["every factor must be positive and finite: X diag(s)^-1 (W diag(s))^T equals X W^T only then"]
        if torch.allclose(got, want.double(), rtol=1e-5):
            continue
        a, b = act.double(), w.double()
        hints = [
            (a ** (1 - alpha) / b ** alpha, "the exponents are swapped: alpha goes on the activation maximum, "
             "1 - alpha on the weight maximum"),
            (b ** (1 - alpha) / a ** alpha, "upside down: s_j = max|X_j|^alpha / max|W_j|^(1-alpha) -- large "
             "activation channels must get large factors, since X is divided by s"),
            (a ** alpha * b ** (1 - alpha), "divide by the weight term max|W_j|^(1-alpha), don't multiply"),
            (a / b, "alpha is the exponent: act^alpha / weight^(1-alpha), not act / weight"),
            ((a / b).sqrt(), f"you used alpha = 0.5 whatever alpha is (here alpha = {alpha})"),
        ]
        hint = next((msg for v, msg in hints if torch.allclose(got, v, rtol=1e-5)), None)
        if hint:
            return [hint]
        worst = int((got / want.double()).sub(1).abs().argmax())
        return [f"for alpha = {alpha}, channel {worst}: you return {float(got[worst]):.4g}, equation (1) gives "
                f"{float(want[worst]):.4g}"]
    return []


def _attention_case_10():
    from ..bert_attention import additive_mask, reference_attention

    g = torch.Generator().manual_seed(11)
    B, H, T, D = 3, 2, 7, 4
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 3:] = 0  # a short sentence
    mask[2, 1:] = 0  # a one-token sentence
    want = reference_attention(q, k, v, additive_mask(mask, B, T), D**-0.5)
    return q, k, v, mask, want


@exercise("10.2", "the key-padding mask as an additive attention bias")
def _check_10_2(fn) -> list[str]:
    from ..bert_attention import reference_attention

    if not callable(fn):
        return ["answer with a function key_padding_bias(attention_mask) -> float tensor [B, 1, 1, T]"]
    q, k, v, mask, want = _attention_case_10()
    bias, err = _call(fn, mask.clone())
    if err:
        return [err]
    if not isinstance(bias, torch.Tensor):
        return [f"return a tensor, got {_describe(bias)}"]
    if not bias.is_floating_point():
        return [f"return a float tensor (it is added to float32 logits), got {bias.dtype}"]
    if bias.shape == mask.shape:
        return ["a [B, T] bias does not broadcast against [B, H, T, T] logits as you mean: it would line B up with "
                "the query axis. Unsqueeze it to [B, 1, 1, T]: one value per key, the same for every head and query"]
    try:
        got = reference_attention(q, k, v, bias.float(), q.shape[-1] ** -0.5)
    except RuntimeError as e:
        return [f"the bias does not broadcast against [B, H, T, T] logits ({str(e).splitlines()[0]}): "
                "shape it [B, 1, 1, T]"]
    if got.shape != want.shape:
        return [f"the bias must broadcast to the logits' shape without changing it: shape [B, 1, 1, T], got "
                f"{tuple(bias.shape)}"]
    if torch.allclose(got, want, atol=1e-5):
        return []
    if bias.dim() == 4 and bias.shape[-1] == 1 and bias.shape[-2] == mask.shape[1]:
        return ["your bias varies along the query axis ([B, 1, T, 1]): padding must be masked as *keys*, along the "
                "last axis ([B, 1, 1, T])"]
    flat = bias.reshape(bias.shape[0], -1)[:, -mask.shape[1]:] if bias.numel() >= mask.numel() else None
    if flat is not None and flat.shape == mask.shape:
        on_tokens, on_padding = flat[mask.bool()], flat[~mask.bool()]
        if on_padding.numel() and on_tokens.numel() and bool((on_tokens < on_padding.min()).all()):
            return ["inverted: the large negative value belongs where the mask is 0 (padding); tokens (mask 1) get 0"]
        if on_padding.numel() and float(on_padding.max()) > -1e4:
            return [f"a padding bias of {float(on_padding.max()):g} is not enough: exp of it is not 0, so padded keys "
                    "still get weight. Use a large negative number (torch.finfo(torch.float32).min) or -inf"]
    return [f"attention with your bias differs from the reference by up to {float((got - want).abs().max()):.3g}: "
            "0 for a token, a large negative number for padding, shape [B, 1, 1, T]"]


#: Exercise 10.3: statements about the int8 paths of notebook 10 -> (true?, why). Truth of "h" comes from the
#: committed recording (:func:`statements_truth_10`).
STATEMENTS_10 = {
    "a": "torchao's dynamic int8 is slower than torch.ao's in eager mode because it runs the activation "
         "quantization and the scaling as separate eager ops around each int8 GEMM",
    "b": "torchao's weight-only int8 runs int8 GEMMs; it is slow only because the weights are dequantized first",
    "c": "torch.ao's quantize_dynamic quantizes the activations to 7 bits whatever the qconfig says",
    "d": "prepare_pt2e raises IndexError because the quantizer cannot fuse BERT's GELU into the linear before it",
    "e": "calling run_decompositions() on the exported program before prepare_pt2e is a valid fix",
    "f": "SmoothQuant changes the float model's output; calibration must correct for it",
    "g": "with static scales, a sentence's embedding from qlab's int8 encoder does not depend on the other sentences "
         "in its batch; with torch.ao dynamic quantization it does",
    "h": "in the recording, static PT2E under Inductor is at least twice as fast as fp32 eager at 1 thread on the "
         "padded batch of 20 sentences",
}

_WHY_10 = {
    "a": "torchao's Int8Tensor quantizes per token and scales with a dozen eager ops around _int_mm (section 3's "
         "profile), while fbgemm's linear_dynamic does it in one fused kernel",
    "b": "it dequantizes the int8 weight to float32 on every call and runs the same fp32 GEMM (aten::mm) as fp32: no "
         "int8 arithmetic at all (section 3)",
    "c": "the dynamic Linear's forward passes reduce_range=True to quantized::linear_dynamic (module version 4); "
         "section 4 shows the source",
    "d": "the cause is the pooler's Linear -> Tanh whose result nobody uses: a dead tanh has no output node "
         "(section 5); GELUActivation is simply not matched",
    "e": "it removes the dead tanh but splits every aten.linear into view/permute/addmm, and the quantizer then "
         "raises ValueError: ... is not an aten linear operator (section 5)",
    "f": "equations (2)-(4) make the smoothed float model equal the original up to float rounding (section 6)",
    "g": "static scales and an exact zero weight for padded keys make the batch irrelevant; a dynamic scale is "
         "computed over the whole padded batch (section 7)",
    "h": "section 10's table gives the recorded speedup",
}


def statements_truth_10(bench: dict | None = None) -> dict[str, bool]:
    """Which statements of 10.3 are true; "h" is read from the recording."""
    from ..transformer_plots import load_results, speedup_table

    bench = load_results() if bench is None else bench
    h = speedup_table(bench, "1", "sentences")["PT2E static compiled"]["vs_fp32"] >= 2.0
    return {"a": True, "b": False, "c": True, "d": False, "e": False, "f": False, "g": True, "h": h}


@exercise("10.3", "why int8 is slower or less accurate, and what fixes it, on MiniLM")
def _check_10_3(answer) -> list[str]:
    letters = sorted(STATEMENTS_10)
    got, problem = _letter_set(answer, letters, "the true statements")
    if problem:
        return [problem]
    truth = statements_truth_10()
    problems = []
    for letter in letters:
        if truth[letter] and letter not in got:
            problems.append(f"missing {letter}: true, {_WHY_10[letter]}")
        elif not truth[letter] and letter in got:
            problems.append(f"not {letter}: {_WHY_10[letter]}")
    return problems

