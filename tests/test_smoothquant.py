"""qlab.smoothquant on small synthetic BERTs (transformers' own BertModel, random weights, an outlier channel)."""

from __future__ import annotations

import pytest
import torch
from bert_fixtures import batch, tiny_bert
from hypothesis import given, settings
from hypothesis import strategies as st

from qlab import smoothquant as sq


def run(m, b):
    with torch.no_grad():
        return m(b["input_ids"], b["attention_mask"])


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([0.0, 0.25, 0.5, 0.85, 1.0]), st.booleans(), st.integers(0, 3))
def test_smoothed_float_model_equals_the_original(alpha, ffn_down, seed):
    model = tiny_bert(seed)
    cal = [batch(seed), batch(seed + 10)]
    smoothed = sq.smooth(model, sq.activation_maxima(model, cal), alpha, ffn_down=ffn_down)
    b = batch(seed + 20)
    want, got = run(model, b), run(smoothed, b)
    assert torch.allclose(got, want, atol=2e-5, rtol=0), float((got - want).abs().max())
    hidden_ref = model.bert(**b).last_hidden_state
    hidden = smoothed.bert(**b).last_hidden_state
    assert torch.allclose(hidden, hidden_ref, atol=1e-4, rtol=1e-4)


def test_without_the_residual_compensation_the_model_breaks():
    """Equation (4) is needed: fold 1/s into the LayerNorms without rescaling the residual and the output changes."""
    model = tiny_bert()
    cal = [batch()]
    smoothed = sq.smooth(model, sq.activation_maxima(model, cal), 0.5)
    for m in smoothed.modules():
        if isinstance(m, sq.ScaledResidual):
            m.res_scale.fill_(1.0)
    b = batch(5)
    assert (run(smoothed, b) - run(model, b)).abs().max() > 1e-2


def test_smoothing_flattens_the_outlier_channel_and_the_original_is_unchanged():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal = [batch(), batch(1)]
    am = sq.activation_maxima(model, cal)
    name = "encoder.layer.0.intermediate.dense"
    assert int(am[name].argmax()) == 7
    smoothed = sq.smooth(model, am, 0.5)
    after = sq.activation_maxima(smoothed, cal)
    ratio = lambda m: float(m.max() / m.median())  # noqa: E731
    assert ratio(after[name]) < ratio(am[name]) / 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_smoothing_factors_is_equation_1():
    a = torch.tensor([4.0, 1.0, 0.25])
    w = torch.tensor([1.0, 4.0, 0.5])
    s = sq.smoothing_factors(a, w, 0.5)
    assert torch.allclose(s, torch.sqrt(a) / torch.sqrt(w))
    assert torch.equal(sq.smoothing_factors(a, w, 1.0), a) and torch.allclose(sq.smoothing_factors(a, w, 0.0), 1 / w)


@pytest.mark.parametrize(
    "act, weight, alpha, error, message",
    [
        (torch.tensor([1.0, float("nan")]), torch.ones(2), 0.5, ValueError, "act_max must be finite and positive"),
        (torch.ones(2), torch.tensor([1.0, 0.0]), 0.5, ValueError, "weight_max must be finite and positive"),
        (torch.ones(2), torch.ones(3), 0.5, ValueError, "same length"),
        (torch.ones(2, 2), torch.ones(2), 0.5, ValueError, "act_max must be a 1-D floating-point tensor"),
        (torch.ones(2), torch.ones(2), 1.5, ValueError, "alpha must be a finite number in"),
        (torch.ones(2), torch.ones(2), float("inf"), ValueError, "alpha must be a finite number"),
        ([1.0, 2.0], torch.ones(2), 0.5, TypeError, "act_max must be a torch.Tensor"),
    ],
)
def test_bad_factors_are_refused(act, weight, alpha, error, message):
    with pytest.raises(error, match=message):
        sq.smoothing_factors(act, weight, alpha)


def test_unsupported_models_are_refused_and_left_unchanged():
    with pytest.raises(TypeError, match="post-LN BERT"):
        sq.smooth(torch.nn.Linear(3, 3), {}, 0.5)
    model = tiny_bert()
    am = sq.activation_maxima(model, [batch()])
    smoothed = sq.smooth(model, am, 0.5)
    with pytest.raises(TypeError, match="not already smoothed"):
        sq.smooth(smoothed, am, 0.5)
    with pytest.raises(ValueError, match="act_max has no entry"):
        sq.smooth(model, {}, 0.5)
    with pytest.raises(TypeError, match="calibration must be a non-empty list"):
        sq.activation_maxima(model, [])


def test_smooth_points_name_the_layernorm_and_its_linears():
    points = sq.smooth_points(tiny_bert())
    assert points["encoder.layer.0.qkv_in"][0] == "embeddings.LayerNorm"
    assert points["encoder.layer.1.qkv_in"] == (
        "encoder.layer.0.output.LayerNorm",
        [f"encoder.layer.1.attention.self.{n}" for n in ("query", "key", "value")],
    )
    assert points["encoder.layer.1.ffn_up_in"][1] == ["encoder.layer.1.intermediate.dense"]
