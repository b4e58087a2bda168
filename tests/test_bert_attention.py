"""qlab.bert_attention: the mask convention, the float reference, and BERT attention on qlab's int8 kernels."""

from __future__ import annotations

import pytest
import torch
from bert_fixtures import batch, tiny_bert
from transformers.models.bert.modeling_bert import eager_attention_forward

from qlab import bert_attention as ba
from qlab import kernels, vit_inspect


def qkv(seed=0, B=3, H=2, T=6, D=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g) for _ in range(3)]


def test_additive_mask_from_every_format():
    m = torch.tensor([[1, 1, 0], [1, 1, 1]])
    bias = ba.additive_mask(m, 2, 3)
    assert bias.shape == (2, 1, 1, 3) and bias.dtype == torch.float32
    assert bias[0, 0, 0].tolist() == [0.0, 0.0, ba.MASK_VALUE] and bias[1].eq(0).all()
    assert torch.equal(ba.additive_mask(m.bool(), 2, 3), bias)
    sdpa = m.bool()[:, None, None, :].expand(2, 1, 3, 3)        # transformers' SDPA mask: True = attend
    assert torch.equal(ba.additive_mask(sdpa, 2, 3), bias.expand(2, 1, 3, 3))
    additive = torch.zeros(2, 1, 3, 3)
    assert ba.additive_mask(additive, 2, 3) is not None and ba.additive_mask(None, 2, 3) is None


@pytest.mark.parametrize(
    "mask, error, message",
    [
        (torch.ones(2, 4, dtype=torch.long), ValueError, r"mask must be \[batch, seq\] = \[2, 3\]"),
        (torch.ones(2, 3), TypeError, "must be int or bool"),
        (torch.ones(2, 1, 3, 3, dtype=torch.long), TypeError, "must be bool"),
        (torch.ones(2, 3, 3, dtype=torch.bool), ValueError, r"mask must be \[B, T\]"),
        (torch.ones(2, 2, 3, 3, dtype=torch.bool), ValueError, r"mask must be \[2, 1, 3 or 1, 3\]"),
        ([[1, 1, 1]], TypeError, "mask must be a torch.Tensor"),
    ],
)
def test_bad_masks_are_named(mask, error, message):
    with pytest.raises(error, match=message):
        ba.additive_mask(mask, 2, 3)


def test_reference_is_transformers_eager_attention_bit_for_bit_and_sdpa_to_rounding():
    q, k, v = qkv()
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]])
    bias = ba.additive_mask(keep, 3, 6)
    scale = 8**-0.5
    ours = ba.reference_attention(q, k, v, bias, scale)
    hf, _ = eager_attention_forward(torch.nn.Module().eval(), q, k, v, bias, scaling=scale)
    assert torch.equal(ours, hf.transpose(1, 2))  # transformers returns [B, T, H, D]
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep.bool()[:, None, None, :])
    assert torch.allclose(ours, sdpa, atol=1e-5)
    # padded keys get exactly zero weight: changing their values changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 4:] = 100.0
    v2[0, :, 4:] = -100.0
    assert torch.equal(ba.reference_attention(q, k2, v2, bias, scale)[0], ours[0])


def test_observed_module_is_the_float_model():
    model = tiny_bert(outlier=3.0)
    b = batch()
    with torch.no_grad():
        want = model(b["input_ids"], b["attention_mask"])
        for layer in model.bert.encoder.layer:
            layer.attention.self = ba.ObservedBertSelfAttention(layer.attention.self)
        got = model(b["input_ids"], b["attention_mask"])
    assert torch.allclose(got, want, atol=1e-5)


@pytest.fixture(scope="module")
def int8_model():
    model = tiny_bert(outlier=3.0)
    cal = [batch(s, 6, 11) for s in range(3)]
    return model, ba.quantize_bert(model, cal)


def test_int8_bert_is_close_and_every_call_is_the_integer_reference(int8_model):
    model, q = int8_model
    b = batch(7)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(q(b["input_ids"], b["attention_mask"]),
                                                    model(b["input_ids"], b["attention_mask"]), dim=1)
    assert cos.min() > 0.98, cos
    calls = vit_inspect.check_int8_calls(lambda ids: q(ids, b["attention_mask"]), b["input_ids"])
    layers = len(model.bert.encoder.layer)
    assert calls == {"int8_bmm": 2 * layers, "int8_linear_packed": 6 * layers, "all_equal": True}
    assert kernels.backend() in ("native", "reference")


@pytest.mark.parametrize("softmax", ["float", "int"])
def test_the_fused_attention_takes_the_mask(softmax):
    """softmax="float"/"int": one int8_attention call per layer, the additive mask inside; each call equals its
    definition, the embeddings stay close to fp32, and a padded sentence equals it alone (fused: exactly)."""
    model = tiny_bert(outlier=3.0)
    q = ba.quantize_bert(model, [batch(s, 6, 11) for s in range(3)], softmax=softmax)
    b = batch(3, 4, 9)  # row 3 has 2 real tokens
    calls = vit_inspect.check_int8_calls(lambda ids: q(ids, b["attention_mask"]), b["input_ids"])
    layers = len(model.bert.encoder.layer)
    assert calls == {"int8_bmm": 0, "int8_attention": layers, "int8_linear_packed": 6 * layers, "all_equal": True}
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(q(b["input_ids"], b["attention_mask"]),
                                                    model(b["input_ids"], b["attention_mask"]), dim=1)
        padded = q(b["input_ids"], b["attention_mask"])[3]
        alone = q(b["input_ids"][3:, :2], b["attention_mask"][3:, :2])[0]
    assert cos.min() > 0.97, cos
    assert torch.allclose(padded, alone, atol=1e-5)
    with pytest.raises(ValueError, match="softmax must be one of"):
        ba.quantize_bert(model, [batch()], softmax="exp")


def test_padding_does_not_change_a_sentence(int8_model):
    """Static scales and the additive mask: a sentence's int8 embedding is the same alone and padded in a batch
    (up to the float summation order of softmax and pooling)."""
    _, q = int8_model
    b = batch(3, 4, 9)  # row 3 has 2 real tokens
    with torch.no_grad():
        padded = q(b["input_ids"], b["attention_mask"])[3]
        alone = q(b["input_ids"][3:, :2], b["attention_mask"][3:, :2])[0]
    assert torch.allclose(padded, alone, atol=1e-5)


def test_variable_sequence_lengths_need_no_recompile(int8_model):
    _, q = int8_model
    with torch.no_grad():
        for t in (3, 17, 40):
            ids = torch.randint(1, 60, (2, t), generator=torch.Generator().manual_seed(t))
            assert q(ids, torch.ones_like(ids)).shape == (2, 32)


def test_unsupported_models_are_named_and_left_unchanged():
    from transformers import BertConfig, BertModel

    from qlab.transformer import Embedder

    with pytest.raises(TypeError, match="Embedder around a transformers BertModel"):
        ba.quantize_bert(torch.nn.Linear(2, 2), [batch()])
    model = tiny_bert()
    with pytest.raises(TypeError, match="calibration must be a non-empty list"):
        ba.quantize_bert(model, [torch.ones(2, 3)])
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, is_decoder=True)
    decoder = Embedder(BertModel(cfg, add_pooling_layer=False).eval())
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    with pytest.raises(TypeError, match="decoder / causal BERT attention is not supported"):
        ba.quantize_bert(decoder, [batch()])
    assert all(torch.equal(v, decoder.state_dict()[k]) for k, v in before.items())
    assert type(decoder.bert.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    with pytest.raises(ValueError, match="requant must be one of"):
        ba.quantize_bert(model, [batch()], requant="exact")


def test_reference_attention_refuses_bad_shapes():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q, k and v must have the same shape"):
        ba.reference_attention(q, k[:, :, :3], v, None, 1.0)
    with pytest.raises(ValueError, match="q must be a float32"):
        ba.reference_attention(q.double(), k, v, None, 1.0)
