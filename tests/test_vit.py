"""qlab.vit and qlab.attention: the digits ViT, the eager int8 fixes, the converter on other timm ViTs."""

from __future__ import annotations

import ipywidgets as W
import pytest
import timm
import torch
from matplotlib.figure import Figure
from torch import nn

from qlab import attention as qa
from qlab import checkpoints, data, vit, vit_inspect
from qlab.int8_block import Int8Block, supported_block
from qlab.int8_mlp import Int8Mlp
from qlab.widgets import LiveFigure

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*deprecated:UserWarning")


@pytest.fixture(scope="module")
def digits_model():
    return checkpoints.load("digits_vit")


@pytest.fixture(scope="module")
def test_set():
    return data.digits("test", 32).tensors


@pytest.fixture(scope="module")
def calib():
    return data.calibration_batches(64, 32, 32)


# ----------------------------------------------------------------------------------------------
# the user's module fails exactly as reported


def test_quant_attention_reproduces_both_failures():
    import torch.ao.quantization as tq

    torch.manual_seed(0)
    m = qa.ReportedAttention(128, num_heads=8).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    m = tq.prepare(m)
    for _ in range(3):
        m(torch.randn(1, 16, 128))
    m = tq.convert(m)
    with pytest.raises(RuntimeError, match="promoteTypes with quantized numbers"):
        m(torch.randn(1, 16, 128))
    q = m.quant(torch.randn(1, 16, 128))
    q, k, v = m.qkv(q).reshape(1, 16, 3, 8, 16).permute(2, 0, 3, 1, 4).unbind(0)
    with pytest.raises(
        NotImplementedError, match=r"Could not run 'aten::bmm.out' with arguments from the 'QuantizedCPU'"
    ):
        q @ k.transpose(-2, -1)


# ----------------------------------------------------------------------------------------------
# building blocks


def test_fix_modules_in_float_match_timm_attention():
    torch.manual_seed(0)
    attn = qa.Attention(64, num_heads=4, qkv_bias=True).eval()
    attn.fused_attn = False
    x = torch.randn(2, 9, 64)
    ref = attn(x)
    for cls in (qa.DequantAttention, qa.FunctionalAttention):
        torch.testing.assert_close(cls(attn).eval()(x), ref, rtol=1e-5, atol=1e-6)  # before convert: float32


# ----------------------------------------------------------------------------------------------
# the four fixes on the digits ViT


def test_fix4_eager_is_int8_exact_and_accurate(digits_model, test_set, calib):
    x, y = test_set
    q = vit.quantize_vit(digits_model, calib)
    kinds = [type(m) for m in q.modules()]
    assert kinds.count(qa.Int8Attention) == 4 and nn.Linear not in kinds
    assert kinds.count(Int8Mlp) == 4 and kinds.count(qa.Int8Linear) == 1  # fc1 -> GELU table -> fc2; the head
    ref = vit.predict(digits_model, x)
    got = vit.compare(vit.predict(q, x), ref, y)
    fp32 = vit.compare(ref, ref, y)
    assert got["accuracy"] >= fp32["accuracy"] - 0.01 and got["cosine"] > 0.99
    calls = vit_inspect.check_int8_calls(q, x[:4])
    # one fused attention per block; q, k, v, proj, fc1, fc2 per block; head
    assert calls == {"int8_bmm": 0, "int8_attention": 4, "int8_linear_packed": 4 * 6 + 1, "all_equal": True}


def test_gelu_table_against_float_gelu(digits_model, test_set, calib):
    """``gelu="table"`` (the default: GELU in fc1's epilogue, on uint8 codes) and ``gelu="float"`` (float32 GELU
    between two quantizations, notebook 08's build) both stay within a point of fp32 on the digits; the table's
    model computes exactly what its reference says (check_int8_calls), with no float GELU left."""
    x, y = test_set
    ref = vit.predict(digits_model, x)
    fp32 = vit.compare(ref, ref, y)["accuracy"]
    for gelu in ("table", "float"):
        q = vit.quantize_vit(digits_model, calib, gelu=gelu)
        assert sum(isinstance(m, nn.GELU) for m in q.modules()) == (0 if gelu == "table" else 4)
        got = vit.compare(vit.predict(q, x), ref, y)
        assert got["accuracy"] >= fp32 - 0.01 and got["cosine"] > 0.99, (gelu, got)
    with pytest.raises(ValueError, match=r"gelu must be one of \['table', 'float'\]"):
        vit.quantize_vit(digits_model, calib, gelu="tanh")


def test_calibrated_prob_scale_keeps_flat_attention(digits_model, calib):
    """P's scale: the largest probability seen while calibrating over 255 (at most 1/255). On a random-weight ViT,
    whose attention over 257 tokens is nearly flat, it is finer than 1/255 and the logits are closer to fp32; the
    integer softmax and ``prob_scale="fixed"`` keep 1/255."""
    for prob_scale, softmax in (("fixed", "float"), ("calibrated", "int")):
        q = vit.quantize_vit(digits_model, calib, softmax=softmax, prob_scale=prob_scale)
        assert all(m.p_scale == qa.PROB_SCALE for m in q.modules() if isinstance(m, qa.Int8Attention))
    torch.manual_seed(0)
    m = timm.models.vision_transformer.VisionTransformer(img_size=64, patch_size=4, embed_dim=96, depth=2,
                                                         num_heads=3, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    cal, x = [torch.randn(2, 3, 64, 64, generator=g)], torch.randn(4, 3, 64, 64, generator=g)
    ref = m(x).detach()
    cos = {}
    for prob_scale in ("fixed", "calibrated"):
        q = vit.quantize_vit(m, cal, prob_scale=prob_scale)
        scales = [a.p_scale for a in q.modules() if isinstance(a, qa.Int8Attention)]
        assert all(s < qa.PROB_SCALE for s in scales) == (prob_scale == "calibrated")
        with torch.no_grad():
            cos[prob_scale] = float(nn.functional.cosine_similarity(q(x).flatten(), ref.flatten(), dim=0))
    assert cos["calibrated"] > cos["fixed"], cos
    with pytest.raises(ValueError, match=r"prob_scale must be one of \['calibrated', 'fixed'\]"):
        vit.quantize_vit(m, cal, prob_scale="auto")


@pytest.mark.parametrize("softmax", ["torch", "int"])
def test_fix4_softmax_choices(digits_model, test_set, calib, softmax):
    """``softmax="torch"``: two int8_bmm around torch.softmax (notebook 08); ``"int"``: the fused op with I-BERT's
    integer softmax (notebook 12); both within a point of fp32 on the digits."""
    x, y = test_set
    q = vit.quantize_vit(digits_model, calib, softmax=softmax)
    calls = vit_inspect.check_int8_calls(q, x[:4])
    want = {"int8_bmm": 8} if softmax == "torch" else {"int8_bmm": 0, "int8_attention": 4}
    assert calls == {**want, "int8_linear_packed": 25, "all_equal": True}
    ref = vit.predict(digits_model, x)
    got, fp32 = vit.compare(vit.predict(q, x), ref, y), vit.compare(ref, ref, y)
    assert got["accuracy"] >= fp32["accuracy"] - 0.01 and got["cosine"] > 0.99
    with pytest.raises(ValueError, match="softmax must be one of"):
        vit.quantize_vit(digits_model, calib, softmax="fused")


@pytest.mark.parametrize("kw", [{}, {"gelu": "float"}, {"softmax": "torch"}, {"softmax": "int"}])
def test_residual_in_the_epilogues_gives_the_same_bits(digits_model, test_set, calib, kw):
    """``Int8Block`` hands each skip connection to the int8 linear before it (``attn.proj``, and ``mlp.fc2`` when the
    MLP is an ``Int8Mlp``): one float32 add in the kernel's last pass, the bits of timm's ``x + y``."""
    x = test_set[0][:16]
    fused, plain = vit.quantize_vit(digits_model, calib, **kw), vit.quantize_vit(digits_model, calib,
                                                                                fuse_residual=False, **kw)
    blocks = [m for m in fused.modules() if isinstance(m, Int8Block)]
    assert len(blocks) == len(digits_model.blocks) and not any(isinstance(m, Int8Block) for m in plain.modules())
    assert all(isinstance(b.mlp, Int8Mlp) == (kw.get("gelu") != "float") for b in blocks)
    assert torch.equal(fused(x), plain(x))
    # a block on its own, on other tokens: the epilogue adds against timm's Block with the same int8 modules
    h = torch.randn(3, 17, digits_model.embed_dim, generator=torch.Generator().manual_seed(0))
    assert type(plain.blocks[0]) is timm.models.vision_transformer.Block
    assert torch.equal(blocks[0](h), plain.blocks[0](h))


def test_add_residual_keeps_a_live_dropout_outside_the_epilogue():
    y, r = torch.randn(4, 8), torch.randn(4, 8)
    layer = lambda res: y if res is None else y + res  # noqa: E731 -- a linear whose epilogue adds res
    assert torch.equal(qa.add_residual(layer, nn.Dropout(0.5).eval(), r), y + r)
    assert torch.equal(qa.add_residual(layer, nn.Identity(), None), y)

    class Halve(nn.Dropout):  # a live dropout (training, p > 0) that draws nothing: x * 0.5
        def forward(self, x):
            return x * 0.5

    assert torch.equal(qa.add_residual(layer, Halve(0.5).train(), r), r + y * 0.5)  # outside the epilogue
    assert torch.equal(qa.add_residual(layer, Halve(0.5).eval(), r), y + r)  # in eval a dropout does nothing


def test_int8_block_refuses_what_it_cannot_fuse(digits_model):
    with pytest.raises(TypeError, match="block must be a timm Block with identity ls1/ls2"):
        Int8Block(digits_model.blocks[0])  # a float attention takes no residual
    scaled = _small(init_values=1e-2).blocks[0]
    assert not supported_block(scaled) and not supported_block(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="fuse_residual must be a bool"):
        vit.quantize_vit(digits_model, [torch.zeros(1, 1, 32, 32)], fuse_residual="yes")


@pytest.mark.parametrize("attention", ["dequant", "functional"])
def test_eager_fixes(digits_model, test_set, calib, attention):
    x, y = test_set
    q = vit.eager_quantize_vit(digits_model, calib, attention)
    cls = qa.DequantAttention if attention == "dequant" else qa.FunctionalAttention
    assert sum(isinstance(m, cls) for m in q.modules()) == 4
    assert any(isinstance(m, torch.ao.nn.quantized.Linear) for m in q.modules())
    ref = vit.predict(digits_model, x[:64])
    got = vit.compare(vit.predict(q, x[:64]), ref, y[:64])
    assert got["cosine"] > 0.99 and got["agreement"] > 0.95


def test_floatfunctional_matmul_runs_in_float_inside(digits_model, calib):
    q = vit.eager_quantize_vit(digits_model, calib, "functional")
    qk = q.blocks[0].attn.qk
    with vit_inspect.spy(qk, "matmul") as calls:
        q(calib[0][:2])
    assert "matmul" not in vars(qk) and len(calls) == 1  # the spy is gone again
    (a, b), out = calls[0]
    assert isinstance(qk, torch.ao.nn.quantized.QFunctional) and a.is_quantized
    want = torch.quantize_per_tensor(a.dequantize() @ b.dequantize(), out.q_scale(), out.q_zero_point(), torch.quint8)
    assert torch.equal(out.int_repr(), want.int_repr())


def test_spy_records_calls_and_restores():
    class Box:
        def twice(self, v):
            return 2 * v

    box = Box()
    with vit_inspect.spy(box, "twice") as calls:
        assert box.twice(3) == 6
    assert calls == [((3,), 6)] and "twice" not in vars(box)
    with pytest.raises(TypeError, match="method must name a callable"):
        with vit_inspect.spy(box, "__doc__"):
            pass


# ----------------------------------------------------------------------------------------------
# the converter on other timm ViTs


def _small(**kw):
    base = dict(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=48, depth=2, num_heads=3)
    return vit.build(**(base | kw)).eval()


VARIANTS = {
    "no qkv_bias": lambda: _small(qkv_bias=False),
    "qk_norm, head_dim 32": lambda: _small(embed_dim=64, num_heads=2, qk_norm=True),
    "scale_attn_norm": lambda: _small(scale_attn_norm=True),
    "depth 3, 6 heads, layer scale": lambda: _small(embed_dim=96, num_heads=6, depth=3, init_values=1e-2),
    "registers, avg pool": lambda: _small(reg_tokens=2, class_token=False, global_pool="avg"),
    "deit_tiny_distilled": lambda: timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
    ).eval(),
    "vit_tiny": lambda: timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
    ).eval(),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_quantize_vit_on_other_timm_vits(name):
    torch.manual_seed(0)
    model = VARIANTS[name]()
    g = torch.Generator().manual_seed(1)
    cal = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    x = torch.randn(6, 3, 32, 32, generator=g)
    q = vit.quantize_vit(model, cal)
    depth = len(model.blocks)
    assert sum(isinstance(m, qa.Int8Attention) for m in q.modules()) == depth
    # the skip connections go into the epilogues of proj and fc2 unless a LayerScale sits between: the same bits
    layer_scale = "layer scale" in name
    assert sum(isinstance(m, Int8Block) for m in q.modules()) == (0 if layer_scale else depth)
    if not layer_scale:
        assert torch.equal(q(x), vit.quantize_vit(model, cal, fuse_residual=False)(x))
    assert not any(type(m) is nn.Linear for m in q.modules())
    ref, got = model(x), q(x)
    ref, got = (ref[0], got[0]) if isinstance(ref, tuple) else (ref, got)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert cos > 0.98, (name, float(cos))
    calls = vit_inspect.check_int8_calls(q, x[:2])
    assert calls["int8_attention"] == depth and calls["all_equal"]
    # the maps the widget draws exist for every block
    maps = vit_inspect.capture_attention(q, x[:1])
    assert len(maps) == depth and maps[0].shape[1] == model.blocks[0].attn.num_heads


def _gated():
    m = _small()
    m.blocks[1].attn = qa.Attention(48, num_heads=3, gated=True)
    return m


@pytest.mark.parametrize(
    "make, where, what",
    [
        (_gated, "model.blocks.1.attn", "gated attention"),
        (lambda: _small(global_pool="map"), "model.attn_pool", "AttentionPoolLatent"),
        (lambda: nn.Sequential(nn.MultiheadAttention(8, 2)), "model.0", "MultiheadAttention"),
        (lambda: nn.Sequential(qa.ReportedAttention(8, 2)), "model.0", "a subclass of timm.layers.Attention"),
        (lambda: nn.Sequential(nn.Linear(3, 3)), "model must contain timm.layers.Attention", ""),
    ],
)
def test_unsupported_modules_are_named(make, where, what):
    with pytest.raises(TypeError, match="cannot be converted|must contain") as exc:
        vit.quantize_vit(make(), [torch.randn(1, 3, 32, 32)])
    assert where in str(exc.value) and what in str(exc.value)


def test_bad_arguments(digits_model):
    with pytest.raises(TypeError, match="calibration_batches must be a non-empty"):
        vit.quantize_vit(digits_model, [])
    with pytest.raises(ValueError, match="requant must be one of"):
        vit.quantize_vit(digits_model, [torch.zeros(1, 1, 32, 32)], requant="double")
    with pytest.raises(ValueError, match="attention must be one of"):
        vit.eager_quantize_vit(digits_model, [torch.zeros(1, 1, 32, 32)], attention="sdpa")
    with pytest.raises(ValueError, match="logits must have the shape"):
        vit.compare(torch.zeros(2, 3), torch.zeros(3, 3))


def test_int8_attention_refuses_masks(digits_model, calib):
    q = vit.quantize_vit(digits_model, calib[:1])
    with pytest.raises(ValueError, match="attn_mask and is_causal are not supported"):
        q.blocks[0].attn(torch.randn(1, 65, 64), is_causal=True)


# ----------------------------------------------------------------------------------------------
# attention maps and their figure


def test_capture_attention_eager_and_graph(digits_model, calib):
    x = calib[0][:2]
    maps = vit_inspect.capture_attention(digits_model, x)
    assert len(maps) == 4 and maps[0].shape == (2, 4, 65, 65)
    torch.testing.assert_close(maps[2].sum(-1), torch.ones(2, 4, 65))
    # fused attention is switched off for the capture, then restored
    fused = vit.set_fused_attn(vit.build(**vit.DIGITS_VIT).eval(), True)
    assert len(vit_inspect.capture_attention(fused, x)) == 4
    assert all(m.fused_attn for m in fused.modules() if isinstance(m, qa.Attention))
    g = torch.export.export(digits_model, (x,)).module()
    gmaps = vit_inspect.capture_attention(g, x)
    assert len(gmaps) == 4
    torch.testing.assert_close(gmaps[1], maps[1])


def test_draw_attention_returns_what_it_shows(digits_model, calib):
    x = calib[0][:1]
    ref = vit_inspect.capture_attention(digits_model, x)
    noisy = [m + 0.01 * (i + 1) for i, m in enumerate(ref)]
    res = vit_inspect.draw_attention(Figure(), x[0], {"fp32": ref, "other": noisy}, layer=1, head=2)
    assert res["head_error"]["fp32"] == [0.0] * 4
    assert res["head_error"]["other"] == pytest.approx([0.02] * 4, abs=1e-6)
    assert len(res["cls_attention"]["fp32"]) == 64 and res["worst"][0] == "other"
    with pytest.raises(ValueError, match="layer must be an int in"):
        vit_inspect.draw_attention(Figure(), x[0], {"fp32": ref}, layer=4)
    with pytest.raises(ValueError, match="head must be an int in"):
        vit_inspect.draw_attention(Figure(), x[0], {"fp32": ref}, head=-1)
    with pytest.raises(ValueError, match="reference must be one of"):
        vit_inspect.draw_attention(Figure(), x[0], {"a": ref})


def test_attention_explorer_in_a_live_figure(digits_model, calib):
    q = vit.quantize_vit(digits_model, calib[:1])
    images = calib[0][:3]
    ex = vit_inspect.AttentionExplorer({"fp32": digits_model, "int8": q}, images)
    lf = LiveFigure(
        ex.draw, {"image": W.IntSlider(0, 0, 2), "layer": W.IntSlider(0, 0, 3), "head": W.IntSlider(0, 0, 3)}
    )
    first = lf.result
    assert first["head_error"]["fp32"] == [0.0] * 4 and max(first["head_error"]["int8"]) > 0
    lf.controls["image"].value = 2
    assert set(ex._cache) == {0, 2} and lf.result["cls_attention"] != first["cls_attention"]
    lf.controls["image"].value = 0
    assert lf.result == first  # cached maps, same figure data
    with pytest.raises(ValueError, match="image must be an int in"):
        ex.maps(3)
