"""qlab.flows: eager PTQ under the engine it packs for, models that run on their engine, QAT fine-tuning."""

from __future__ import annotations

import pytest
import torch
import torch.ao.quantization as tq

import qlab
from qlab import checkpoints, data, flows
from qlab.fake_quant import FakeQuantize

pytestmark = [pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*deprecated:UserWarning")]


@pytest.fixture(scope="module")
def cnn():
    return checkpoints.load("digits_cnn")


def test_ptq_runs_under_its_engine_and_keeps_the_callers(cnn):
    calib = data.calibration_batches(64, size=16)
    x, y = data.digits("test", 16).tensors
    before = torch.backends.quantized.engine
    q = flows.ptq(cnn, calib, engine="fbgemm")
    assert isinstance(q, flows.OnEngine) and q.engine == "fbgemm" and torch.backends.quantized.engine == before
    assert "engine='fbgemm'" in repr(q)
    with torch.no_grad():
        agree = (q(x).argmax(1) == cnn(x).argmax(1)).float().mean()
    assert agree > 0.98 and torch.backends.quantized.engine == before
    with pytest.raises(TypeError, match="fuse_spec"):
        flows.ptq(torch.nn.Linear(2, 2), calib)
    with pytest.raises(TypeError, match="calibration must be"):
        flows.ptq(cnn, [])


def test_qat_finetune_records_ranges_and_freezes(cnn):
    model = tq.fuse_modules_qat(cnn.__class__().train(), cnn.fuse_spec())
    model.load_state_dict(tq.fuse_modules_qat(checkpoints.load("digits_cnn").train(), cnn.fuse_spec()).state_dict())
    model.qconfig = tq.QConfig(
        activation=FakeQuantize.with_args(quant_min=0, quant_max=255), weight=tq.default_per_channel_weight_fake_quant
    )
    model = tq.prepare_qat(model)
    loader = [b for b, _ in zip(data.loaders(size=16, batch_size=32)[0], range(5), strict=False)]
    loss, history = flows.qat_finetune(model, loader, {"input": "quant", "fc": "fc"}, freeze_at=3)
    assert loss > 0 and [len(h) for h in history.values()] == [5, 5]
    assert history["fc"][2] == history["fc"][4] != history["fc"][0]  # frozen after step 3
    with pytest.raises(ValueError, match=r"watch\['x'\] must name a module"):
        flows.qat_finetune(model, loader, {"x": "nope"}, freeze_at=1)
    with pytest.raises(ValueError, match="freeze_at must be an int >= 1"):
        flows.qat_finetune(model, loader, {"fc": "fc"}, freeze_at=0)


def test_fx_ptq_runs_under_its_engine(cnn):
    calib = data.calibration_batches(64, size=16)
    x, _ = data.digits("test", 16).tensors
    before = torch.backends.quantized.engine
    q = flows.fx_ptq(cnn, calib, engine="fbgemm")
    assert isinstance(q, flows.OnEngine) and q.engine == "fbgemm" and torch.backends.quantized.engine == before
    with torch.no_grad():
        assert (q(x).argmax(1) == cnn(x).argmax(1)).float().mean() > 0.98
    with pytest.raises(ValueError, match="engine must be one of"):
        flows.fx_ptq(cnn, calib, engine="tpu")


def test_show_source_and_expect_error(capsys):
    from qlab import show

    src = show.source(flows.ptq)
    assert src.startswith("@torch.no_grad()\ndef ptq(") and '"""' not in src and "with scoped(engine=engine):" in src
    assert '"""' in show.source(flows.ptq, docstring=True)
    with show.expect_error(ValueError) as caught:
        raise ValueError("first line\nsecond\nthird\nfourth\nfifth")
    out = capsys.readouterr().out
    assert out.startswith("ValueError: first line\nsecond\nthird [... 2 more lines]") and "raised from:" in out
    assert isinstance(caught.exception, ValueError)
    with pytest.raises(AssertionError, match="expected to raise KeyError"):
        with show.expect_error(KeyError):
            pass
    with pytest.raises(TypeError):  # another error passes through
        with show.expect_error(KeyError):
            raise TypeError("no")


def test_qat_observed_gives_fake_and_real_twins_and_leaves_the_model():
    fp32 = checkpoints.load("digits_cnn")
    before = {k: v.clone() for k, v in fp32.state_dict().items()}
    batches = data.calibration_batches(32, size=16)
    fake, real = flows.qat_observed(fp32, batches, "fbgemm")
    assert not fake.training and not fake.features[0].activation_post_process.observer_enabled[0]
    assert real.features[0].weight().is_quantized and type(real.features[0]).__name__ == "ConvReLU2d"
    with qlab.engine("fbgemm"), torch.no_grad():
        agree = (fake(batches[0]).argmax(1) == real(batches[0]).argmax(1)).float().mean()
    assert agree > 0.9
    assert all(torch.equal(before[k], v) for k, v in fp32.state_dict().items())
    with pytest.raises(TypeError, match="fuse_spec"):
        flows.qat_observed(torch.nn.Linear(2, 2), batches)
