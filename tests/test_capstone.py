"""qlab.capstone: the held-out model, the tasks, and the parts of assess() that find what is wrong. assess() itself
runs in tests/test_exercises.py, on the reference answer and on typical wrong answers of exercise 13.1."""

from __future__ import annotations

import pytest
import torch

from qlab import capstone, checkpoints, pt2e


def test_the_model_and_its_bad_arguments():
    m = capstone.DigitsDSNet().eval()
    assert m(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    assert sum(isinstance(x, torch.nn.Conv2d) and x.groups > 1 for x in m.modules()) == 4  # one depthwise per block
    with pytest.raises(ValueError, match="widths must be three"):
        capstone.DigitsDSNet(widths=(8, 16))
    with pytest.raises(ValueError, match="blocks must be three"):
        capstone.DigitsDSNet(blocks=(1, -1, 1))
    with pytest.raises(TypeError, match="expand must be an int"):
        capstone.DigitsDSNet(expand=1.5)


def test_tasks_hand_out_batch_shaped_inputs_and_cover_the_test_split():
    t = capstone.task("heldout")
    assert t.checkpoint == "digits_dsnet" and isinstance(t.model, capstone.DigitsDSNet) and not t.model.training
    assert t.example.shape == (capstone.BATCH, 1, 32, 32)
    assert all(b.shape == t.example.shape for b in t.calibration + t.test)
    assert len(t.calibration) * capstone.BATCH == capstone.CALIBRATION_IMAGES
    assert len(t.test) * capstone.BATCH >= len(t.labels) > (len(t.test) - 1) * capstone.BATCH
    assert capstone.task("practice").example.shape == (capstone.BATCH, 1, 16, 16)
    with pytest.raises(ValueError, match="name must be one of"):
        capstone.task("digits_cnn")


def test_calibration_batches_remember_what_was_read():
    b = capstone._Batches([torch.zeros(1)] * 4)
    b[0]
    assert b.read == {0}
    list(b[1:3])
    assert b.read == {0, 1, 2}
    for _ in b:
        pass
    assert b.read == {0, 1, 2, 3} and len(b) == 4 and b[-1].shape == (1,)


def test_int8_ops_are_recognised():
    ops = ["aten::mkldnn_convolution", "onednn::qconv2d_pointwise", "onednn::qlinear_pointwise", "quantized::conv2d",
           "aten::quantize_per_tensor"]
    assert capstone.int8_ops(ops) == ops[1:4]


def test_activation_errors_find_a_miscalibrated_activation_and_float_at_removes_it():
    model = checkpoints.load("digits_cnn")
    t = capstone.task("practice")
    gm = pt2e.pt2e_int8(model, t.calibration)
    good = capstone.activation_errors(gm, t.example)
    assert good and all(r["sqnr_db"] > 20 and r["clipped"] < 0.01 for r in good)
    assert good == sorted(good, key=lambda r: r["sqnr_db"])
    assert good[-1]["layer"] != good[0]["layer"] or len(good) == 1
    # shrink one activation's scale tenfold: it clips, and is reported first
    node = next(n for n in gm.graph.nodes if capstone._is_quantize(n) and n.args[0].op != "placeholder")
    node.args = (node.args[0], node.args[1] / 10, *node.args[2:])
    gm.recompile()
    bad = capstone.activation_errors(gm, t.example)
    assert bad[0]["node"] == node.name and bad[0]["clipped"] > 0.05 and bad[0]["sqnr_db"] < good[0]["sqnr_db"]
    floated = capstone.float_at(gm, node.name)
    assert sum(capstone._is_quantize(n) for n in floated.graph.nodes) == len(good) - 1
    assert capstone.accuracy(floated, t) > capstone.accuracy(gm, t)
    with pytest.raises(TypeError, match="gm must be a torch.fx.GraphModule"):
        capstone.activation_errors(model, t.example)


def test_assess_refuses_bad_arguments():
    with pytest.raises(TypeError, match="quantize must be a function"):
        capstone.assess("pt2e")
    with pytest.raises(ValueError, match="name must be one of"):
        capstone.assess(lambda m, c, e: m, "mnist")
    with pytest.raises(ValueError, match="rounds must be an int"):
        capstone.assess(lambda m, c, e: m, rounds=1)


def test_assess_reports_the_float_model_on_the_practice_task():
    rep = capstone.assess(lambda model, calibration, example: model, "practice", rounds=3)
    assert rep.accuracy == rep.fp32_accuracy and rep.within_budget and not rep.int8 and not rep.compiled
    assert rep.speedup is None and "not timed" in str(rep)
    assert rep.calibration_read == (0, len(capstone.task("practice").calibration))
    assert not rep.passed and any("float DigitsCNN" in p for p in rep.problems), rep.problems
    assert "problem:" in str(rep) and "int8 ops   none" in str(rep)


def test_faster_is_equation_1():
    from qlab.timing import Timing, Timings

    def timings(fp32, yours):
        return Timings(fp32=Timing("fp32", fp32), yours=Timing("yours", yours))

    assert capstone.faster(timings([10, 10, 12, 12], [5, 5, 6, 6])) == (2.0, True)
    sp, ok = capstone.faster(timings([10, 10, 10, 30], [9, 9, 9, 9]))  # faster in every round, but fp32's Q25 = 10
    assert sp > 1 and ok
    sp, ok = capstone.faster(timings([10, 10, 12, 14], [9, 9, 13, 13]))  # the middle halves overlap
    assert sp > 1 and not ok
    assert capstone.faster(timings([5, 5, 5, 5], [10, 10, 10, 10])) == (0.5, False)
    with pytest.raises(ValueError, match="baseline must be one of"):
        capstone.faster(timings([1], [1]), baseline="fp16")
