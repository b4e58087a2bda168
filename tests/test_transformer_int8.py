"""qlab.transformer_int8 and qlab.transformer_errors on small synthetic BERTs: the PT2E failure and its fix, each
int8 path, the emulated quantization choices."""

from __future__ import annotations

import pytest
import torch
from bert_fixtures import batch, tiny_bert
from fbgemm_units import SATURATES
from torch import nn

import qlab
from qlab import transformer_errors as te
from qlab import transformer_int8 as ti
from qlab.transformer import Embedder, cosines


def _prepare(gm):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    with qlab.scoped():
        return prepare_pt2e(gm, qlab.pt2e.x86_quantizer())


def test_minimal_reproduction_and_its_fix():
    with qlab.scoped(seed=0):
        m = ti.DeadBranch().eval()
    gm = torch.export.export(m, (torch.randn(2, 8),)).module()
    assert [s.split(": ")[1] for s in ti.dead_code(gm)] == ["aten.tanh.default"]
    with pytest.raises(IndexError, match="list index out of range"):
        _prepare(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    assert ti.dead_code(gm) == [] and _prepare(gm) is not None


def with_pooler(seed=0) -> Embedder:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    with qlab.scoped(seed=seed):
        return Embedder(BertModel(cfg).eval())


def test_the_bert_pooler_is_the_dead_code():
    model, b = with_pooler(), batch()
    gm = ti.export(model, b, dce=False)
    assert any(s.endswith("aten.tanh.default") for s in ti.dead_code(gm))
    with pytest.raises(IndexError):
        _prepare(gm)
    assert ti.dead_code(ti.export(model, b)) == []


def test_without_the_pooler_nothing_is_dead():
    """The other fix: add_pooling_layer=False (tiny_bert has no pooler) exports without the dead tanh."""
    model, b = tiny_bert(outlier=3.0), batch()
    gm = ti.export(model, b, dce=False)
    assert not any(s.endswith("aten.tanh.default") for s in ti.dead_code(gm))
    assert _prepare(gm) is not None


def test_decomposing_before_prepare_breaks_the_annotation():
    model, b = with_pooler(), batch()
    with qlab.scoped():
        ep = torch.export.export(model, (b["input_ids"], b["attention_mask"])).run_decompositions()
    with pytest.raises(ValueError, match="is not an aten linear operator"):
        _prepare(ep.module())


def test_pt2e_static_runs_every_shape_and_can_skip_modules():
    model = with_pooler()
    cal = [batch(s, 4, 10) for s in range(2)]
    q = ti.pt2e_static(model, cal)
    for bsz, t in ((1, 5), (3, 12)):
        b = batch(9, bsz, t)
        b["attention_mask"][:] = 1
        with torch.no_grad():
            assert cosines(q(**b), model(**b)).min() > 0.95
    skipped = ti.pt2e_static(model, cal, skip=ti.ffn_down_names(model))
    linears = [n for n in skipped.graph.nodes if n.target == torch.ops.aten.linear.default]
    float_weights = [n for n in linears if n.args[1].op == "get_attr"]
    assert len(float_weights) == 2  # the two FFN down-projections kept their float weights
    with pytest.raises(ValueError, match="skip must be one of"):
        ti.pt2e_static(model, cal, skip=["encoder.layer.0.output"])
    with pytest.raises(TypeError, match="calibration must be a non-empty list"):
        ti.pt2e_static(model, [])
    with pytest.raises(ValueError, match=r"B >= 2 and T >= 3"):
        ti.export(model, batch(0, 1, 5))


def test_compiled_runs_int8_under_freezing_and_restores_the_flags():
    import torch._inductor.config as ic

    model = tiny_bert()
    q = ti.pt2e_static(model, [batch(s, 4, 10) for s in range(2)])
    before = ic.freezing
    c = ti.compiled(q, batch(0, 4, 10))
    assert ic.freezing == before  # compiled sets freezing only while it compiles
    for bsz, t in ((4, 10), (3, 12)):  # dynamic: a second shape runs without a shape error
        b = batch(5, bsz, t)
        with qlab.scoped(inductor={"freezing": True}), torch.no_grad():
            got, want = c(**b), q(**b)
        assert cosines(got, want).min() > 0.99
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ti.compiled(lambda **b: b, batch())
    with pytest.raises(TypeError, match="example must be the dict"):
        ti.compiled(q, (batch()["input_ids"],))
    with pytest.raises(TypeError, match="inductor must be a dict"):
        ti.compiled(q, batch(), inductor=["freezing"])


def test_ao_dynamic_reduce_range_and_per_channel():
    model, b = tiny_bert(outlier=3.0), batch()
    default = ti.ao_dynamic(model)
    full = ti.ao_dynamic(model, per_channel=True, reduce_range=False)
    dyn = [m for m in full.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert len(dyn) == len(ti.linear_names(model)) and {m.version for m in dyn} == {3}
    assert dyn[0].weight().qscheme() == torch.per_channel_affine
    with torch.no_grad():
        ref, a, c = model(**b), default(**b), full(**b)
    err_full, err_default = (1 - cosines(c, ref)).mean(), (1 - cosines(a, ref)).mean()
    if SATURATES:  # FBGEMM without VNNI: 8-bit activations saturate vpmaddubsw's int16 pairs, 7 bits cannot
        assert err_full > 10 * err_default
    else:
        assert err_full < err_default
    with pytest.raises(TypeError, match="model must be a qlab.transformer.Embedder"):
        ti.ao_dynamic(nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["dynamic", "weight_only"])
def test_torchao_paths_run_and_leave_the_float_model(kind):
    model, b = tiny_bert(outlier=3.0), batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = ti.torchao_int8(model, kind)
    with torch.no_grad():
        assert cosines(q(**b), model(**b)).min() > 0.98
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_int4_and_bad_kinds():
    model = tiny_bert()
    with pytest.raises(ValueError, match="kind must be one of"):
        ti.torchao_int8(model, "int2")
    try:  # torchao 0.18 on x86: no CPU int4 weight-only kernel without extra packages; whatever it does is shown
        q = ti.torchao_int8(model, "int4_weight_only")
    except Exception as exc:  # the notebook prints this error
        assert str(exc)
    else:
        assert q is not model


def test_bf16_autocast_returns_float32():
    model, b = tiny_bert(outlier=3.0), batch()
    with torch.no_grad():
        out = ti.bf16_autocast(model)(**b)
        assert out.dtype == torch.float32 and cosines(out, model(**b)).min() > 0.99


def test_emulated_choices_and_channel_maxima():
    model, b = tiny_bert(), batch()
    with torch.no_grad():
        ref = model(**b)
        err = {(a, w): 1 - float(cosines(te.emulate(model, a, w)(**b), ref).mean())
               for a in ("u7", "u8") for w in (None, "channel")}
    assert err[("u8", None)] < err[("u7", None)] and err[("u8", "channel")] < err[("u7", "channel")]
    names = [n for n, m in te.emulate(model, "u8", "tensor", ["FFN down"]).named_modules()
             if isinstance(m, te.FakeQuantLinear)]
    assert names == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    inputs = te.linear_inputs(model, b["input_ids"], b["attention_mask"])
    assert inputs["bert.encoder.layer.0.intermediate.dense"].shape[0] == int(b["attention_mask"].sum())
    rows = te.outlier_rows(te.channel_maxima(inputs))
    assert {r["top"] for r in rows if r["group"] == "FFN up"} == {7}
    with pytest.raises(ValueError, match="act must be one of"):
        te.emulate(model, "u4", None)
    with pytest.raises(ValueError, match="groups must be one of"):
        te.emulate(model, "u8", None, ["FFN"])
