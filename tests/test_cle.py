"""qlab.cle: BN folding, cross-layer equalization (exact where equation (7) holds, and with ReLU6 by equation
(9)), and bias correction that fits on calibration data and helps on held-out data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qlab import cle, effnet


@pytest.fixture(scope="module")
def folded():
    return cle.fold_bn(effnet.plain(effnet.load()))


@pytest.fixture(scope="module")
def data():
    x, _ = effnet.eval_set(1)
    return {"calib": effnet.calibration_batches(0), "heldout": x}


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|: float32 rounding is ~1e-6 here."""
    return float((a - b).abs().max() / b.abs().max())


def test_folding_keeps_the_float_function(data):
    m = effnet.plain(effnet.load())
    f = cle.fold_bn(m)
    x = data["heldout"][:3]
    assert _close(effnet.predict(f, x), effnet.predict(m, x)) < 1e-5
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in f.modules())
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 49  # the caller's model is unchanged
    with pytest.raises(ValueError, match="already folded"):
        cle.fold_bn(f)


def test_equalization_is_exact_with_relu_and_balances_the_ranges(folded, data):
    relu = cle.relu6_to_relu(folded, "dw")
    eq, scales = cle.equalize(relu)
    x = data["heldout"][:3]
    assert _close(effnet.predict(eq, x), effnet.predict(relu, x)) < 1e-5
    for i, b in enumerate(eq._blocks):
        r1 = cle.weight_ranges(b._depthwise_conv.weight, 0)
        r2 = cle.weight_ranges(b._project_conv.weight, 1)
        live = (scales[f"_blocks.{i}.dw->pw"] != 1)
        assert torch.allclose(r1[live], r2[live], rtol=1e-5), i  # equation (8): both ranges sqrt(r1 r2)
    assert not any(isinstance(mod, cle.ClampPerChannel) for mod in eq.modules())


def test_equalization_with_relu6_needs_the_per_channel_clip(folded, data):
    eq, _ = cle.equalize(folded)
    x = data["heldout"][:3]
    ref = effnet.predict(folded, x)
    assert _close(effnet.predict(eq, x), ref) < 1e-5  # equation (9): exact
    naive = eq
    for b in naive._blocks:
        b._bn1[1] = nn.ReLU6()  # the same scaled weights, the clip left at 6: equation (7) does not hold
    assert _close(effnet.predict(naive, x), ref) > 0.05
    assert isinstance(folded._blocks[0]._bn1[1], nn.ReLU6)  # equalize copied: the caller's model is unchanged


def test_equalization_refuses_what_it_cannot_do(folded):
    with pytest.raises(ValueError, match="BatchNorm-folded first"):
        cle.equalize(effnet.plain(effnet.load()))
    with pytest.raises(ValueError, match="pairs must be one of"):
        cle.equalize(folded, "pw->fc")
    with pytest.raises(ValueError, match="model must be an EfficientNet-Lite"):
        cle.equalize(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="model must be qlab.effnet.plain"):
        cle.fold_bn(effnet.load())
    odd = cle.fold_bn(effnet.plain(effnet.load()))
    odd._blocks[0]._bn1[1] = nn.SiLU()
    with pytest.raises(ValueError, match="cannot equalize through SiLU"):
        cle.equalize(odd)


def _layer_inputs(model, batches, names):
    acts = {n: [] for n in names}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, a, o, n=n: acts[n].append(a[0])) for n in names]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in acts.items()}


def test_bias_correction_reduces_the_mean_error_per_channel_on_heldout_data(folded, data):
    """Per layer, with the fp32 inputs of held-out photos: the mean over positions of (int8-weight output -
    float output), per channel, before and after the correction fitted on the calibration photos."""
    corrected = cle.bias_correct(folded, data["calib"], "per_tensor")
    names = [n for n, m in folded.named_modules() if isinstance(m, nn.Conv2d)]
    acts = _layer_inputs(folded, [data["heldout"]], names)
    fm, cm = dict(folded.named_modules()), dict(corrected.named_modules())
    before, after = [], []
    for n in names:
        m, x = fm[n], acts[n]
        err = F.conv2d(x, cle.weight_error(m.weight), None, m.stride, m.padding, m.dilation, m.groups)
        bias_err = err.mean((0, 2, 3))  # E[conv(x, eps)]: the shift of the output mean, per channel
        before.append(bias_err.abs().mean())
        after.append((bias_err - (m.bias - cm[n].bias)).abs().mean())
    before, after = torch.stack(before), torch.stack(after)
    assert float(after.sum()) < 0.5 * float(before.sum())
    assert int((after < before).sum()) >= 0.8 * len(names)
    assert torch.equal(folded._conv_stem.bias, fm["_conv_stem"].bias)  # not changed in place


def test_bias_correction_checks_its_data(folded):
    with pytest.raises(ValueError, match="calibration must hold"):
        cle.bias_correct(folded, [])
    with pytest.raises(ValueError, match=r"calibration\[0\] must be image batches"):
        cle.bias_correct(folded, [torch.zeros(2, 1, 8, 8)])
    with pytest.raises(ValueError, match="weights must be one of"):
        cle.bias_correct(folded, [torch.zeros(1, 3, 224, 224)], "per_block")


def test_weight_error_is_the_observers_rounding():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    e = cle.weight_error(w, "per_tensor")
    step = float(w.abs().max()) / 127.5
    assert float(e.abs().max()) <= step / 2 + 1e-7
    e_pc = cle.weight_error(w, "per_channel")
    assert float(e_pc.abs().amax((1, 2, 3)).max()) <= step / 2 + 1e-7
    assert float(e_pc.abs().mean()) < float(e.abs().mean())


def test_clamp_per_channel():
    c = cle.ClampPerChannel(torch.tensor([1.0, 2.0]))
    x = torch.tensor([[-1.0, 5.0]]).view(1, 2, 1, 1).expand(1, 2, 1, 2)
    assert c(x).flatten().tolist() == [0.0, 0.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="upper must be"):
        cle.ClampPerChannel(torch.tensor([1.0, 0.0]))
