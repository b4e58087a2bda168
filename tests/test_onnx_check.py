"""qlab.onnx_check: export the converted model to ONNX (QDQ), run ONNX Runtime, compare integer codes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.ao.quantization as tq
from torch import nn

import qlab
from qlab import mismatch as mm
from qlab.onnx_check import compare_codes, cross_check, export_qdq, onnx_op_counts

pytest.importorskip("onnxruntime")


def test_seed_exports_as_qdq_and_ort_matches_pytorch_real():
    r = mm.run_seed(1.0)
    x = mm.seed_input()
    model = export_qdq(r.converted, x)
    ops = onnx_op_counts(model)
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 3 and ops["Conv"] == 1
    assert onnx_op_counts(model, optimized=True).get("QLinearConv") == 1
    cc = cross_check(r.prepared, r.converted, x, model=model)
    assert cc.agreement("ort_int", "torch_real").pct_equal == 100.0
    assert cc.agreement("ort_int", "ref_int32").pct_equal == 100.0
    assert cc.agreement("torch_fake", "torch_real").pct_equal == 50.0  # 128 of every 256 codes are off by 1
    assert cc.codes["conv"]["ort_int"][0, 0, 0].tolist() == list(range(128)) + list(range(127, 255))


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.gap, self.flat = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(8, 5)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(self.quant(x))))
        x = self.flat(self.gap(self.relu2(self.conv2(x))))
        return self.dequant(self.fc(x))


def test_multilayer_ort_equals_the_int32_bias_reference():
    with qlab.scoped(engine="fbgemm", seed=0):
        m = Chain()
        tq.fuse_modules_qat(m, [["conv1", "relu1"], ["conv2", "relu2"]], inplace=True)
        m.qconfig = tq.get_default_qat_qconfig("fbgemm")
        mp = tq.prepare_qat(m.train())
        x = torch.randn(4, 3, 16, 16)
        for _ in range(4):
            mp(x)
        mp.apply(tq.disable_observer).eval()
        mq = tq.convert(copy.deepcopy(mp))
        cc = cross_check(mp, mq, x)
        assert cc.layers == ["quant", "conv1", "pool", "conv2", "gap", "flat", "fc"]
        for layer in cc.layers:
            assert cc.agreement("ref_fbgemm", "torch_real", layer).pct_equal == 100.0, layer
            assert cc.agreement("ort_int", "ref_int32", layer).pct_equal == 100.0, layer
        assert "ort_int vs torch_real" in repr(cc)
        assert list(cc.to_dataframe().index) == cc.layers


def test_compare_codes():
    ag = compare_codes(torch.tensor([1, 2, 3]), torch.tensor([1, 4, 3]))
    assert (ag.n, ag.equal, ag.max_lsb) == (3, 2, 2) and "66.67 %" in str(ag)
    with pytest.raises(ValueError, match="one shape"):
        compare_codes(torch.zeros(2), torch.zeros(3))
    with pytest.raises(TypeError, match="converted must be"):
        export_qdq("model", torch.zeros(1))
