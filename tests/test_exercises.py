"""Every exercise checker accepts its reference solution and gives specific feedback on typical wrong answers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import QConfigMapping, get_default_qconfig_mapping

from qlab import exercises
from qlab.exercises import nb02, nb04, nb05, nb08


def _ptq_pt2e(*, convert=True, set_global=True, dynamic=True, batches=None, module=True, example_rows=None):
    """A learner's ptq_pt2e for exercise 06.1, with one of the typical mistakes switched on."""

    def ptq_pt2e(model, calibration):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

        example = calibration[0] if example_rows is None else calibration[0][:example_rows]
        shapes = {"x": {0: torch.export.Dim("batch", max=1024)}} if dynamic else None
        exported = torch.export.export(model, (example,), dynamic_shapes=shapes)
        quantizer = xiq.X86InductorQuantizer()
        if set_global:
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported.module() if module else exported, quantizer)
        with torch.no_grad():
            for xb in calibration[:batches]:
                prepared(xb)
        return convert_pt2e(prepared) if convert else prepared

    return ptq_pt2e


def _r1(w1):
    return w1.abs().flatten(1).amax(1)


def _r2(w2, dim=1):
    return w2.abs().transpose(0, dim).flatten(1).amax(1)


def _safe(s):
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))


def _gelu_answer(zp_in=True, zp_out=True, rnd=torch.round, approximate="none", clamp=True, dtype=torch.uint8):
    """A learner's gelu_table for 12.1 with one typical mistake."""

    def gelu_table(s_in, z_in, s_out, z_out):
        x = (torch.arange(256, dtype=torch.float32) - (z_in if zp_in else 0)) * s_in
        y = rnd(torch.nn.functional.gelu(x, approximate=approximate) * torch.tensor(1.0 / s_out)) + (z_out if zp_out
                                                                                                      else 0)
        return (y.clamp(0, 255) if clamp else y).to(dtype)

    return gelu_table


def _unused_answer(buffers=True, modules=True, dot=True, get_attr=True):
    """A learner's unused_tensors for 14.1 with one typical mistake."""

    def unused_tensors(gm):
        read = {n.target for n in gm.graph.nodes if n.op == "get_attr"} if get_attr else set()
        called = [n.target + ("." if dot else "") for n in gm.graph.nodes if n.op == "call_module"] if modules else []
        names = [k for k, _ in gm.named_parameters()] + ([k for k, _ in gm.named_buffers()] if buffers else [])
        return [k for k in names if k not in read and not any(k.startswith(c) for c in called)]

    return unused_tensors


def _budget_answer(key="low", strict=False, shift=0, none=None):
    """A learner's float_layers_for_budget for 11.3 with one typical mistake."""

    def float_layers_for_budget(steps, budget):
        for k, step in enumerate(steps):
            v = step["measures"]["sqnr_db"][key]
            if v > budget if strict else v >= budget:
                return k + shift
        return none

    return float_layers_for_budget


def _shift_answer(kind):
    def output_shift(conv, x, wq):
        if kind == "sign":
            return F.conv2d(x, conv.weight - wq, None, conv.stride, conv.padding, conv.dilation, conv.groups).mean(
                (0, 2, 3))
        if kind == "mean":
            return F.conv2d(x, wq, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups).mean((0, 2, 3))
        if kind == "nopad":
            return F.conv2d(x, wq - conv.weight, None, conv.stride, 0, conv.dilation, conv.groups).mean((0, 2, 3))
        if kind == "nogroups":
            return F.conv2d(x, wq - conv.weight, None, conv.stride, conv.padding).mean((0, 2, 3))
        if kind == "shape":
            return F.conv2d(x, wq - conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups).mean(0)
        raise AssertionError(kind)

    return output_shift
_CONVERTED_13: dict = {}


def _capstone(mistake):
    """A learner's quantize for the capstone (13.1) with one typical mistake. The answers that calibrate correctly
    share one converted graph (a copy each): the checker still compiles, evaluates and profiles every answer."""

    def quantize(model, calibration_batches, example_input):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        from qlab.data import MEAN, STD
        from qlab.pt2e import export_batch_dynamic, lower, pt2e_int8, x86_quantizer

        if mistake == "float":
            return model
        if mistake == "in place":  # folds the first batch-norm into its conv in the caller's model
            torch.ao.quantization.fuse_modules(model, [["features.0.0", "features.0.1"]], inplace=True)
            return model
        if mistake == "no calibration":  # and returned uncompiled
            return convert_pt2e(prepare_pt2e(export_batch_dynamic(model, example_input).module(), x86_quantizer()))
        if mistake == "unnormalised":  # calibrated on the pixels before normalisation (and returned uncompiled)
            return pt2e_int8(model, [b * STD + MEAN for b in calibration_batches])
        else:
            if "gm" not in _CONVERTED_13:
                _CONVERTED_13["gm"] = pt2e_int8(model, calibration_batches)
            converted = copy.deepcopy(_CONVERTED_13["gm"])
        if mistake == "q/dq":
            return converted
        return lower(converted, example_input, freezing=mistake != "no freezing")

    return quantize


WRONG = {
    "01.1": [
        (lambda lo, hi: ((hi - lo) / 255, -lo / ((hi - lo) / 255)), "must be an integer code"),
        (lambda lo, hi: ((hi - lo) / 255, round(-lo / ((hi - lo) / 255))), "widen the range to contain 0"),
        (lambda lo, hi: ((max(hi, 0) - min(lo, 0)) / 256, 0), "divide by qmax - qmin = 255, not 256"),
        (lambda lo, hi: ((max(hi, 0) - min(lo, 0)) / 255, 0), "the zero point for"),
        (lambda lo, hi: 1 / 0, "raised ZeroDivisionError"),
        (lambda lo, hi: 0.1, "return a pair"),
    ],
    "01.2": [
        (lambda x, s, z: torch.round(x / s) + z, "clamp to [0, 255]"),
        (lambda x, s, z: torch.clamp(torch.floor(x / s + 0.5) + z, 0, 255), "round half to even"),
        (lambda x, s, z: torch.clamp(torch.round(x / s), 0, 255), "add the zero point"),
        (lambda x, s, z: torch.clamp(torch.round(x * s) + z, 0, 255), "divide by the scale"),
        (lambda x, s, z: [1, 2], "return a tensor"),
    ],
    "01.3": [(1, "axis 1 is the input channel"), ("out", "answer with the axis")],
    "02.1": [
        (lambda x, p: (x.min(), x.max()), "that is MinMax's range"),
        (lambda x, p: (torch.quantile(x.flatten(), p / 100), torch.quantile(x.flatten(), 1 - p / 100)), "swapped"),
        (
            lambda x, p: (-torch.quantile(x.abs().flatten(), p / 100), torch.quantile(x.abs().flatten(), p / 100)),
            "percentile of |x|",
        ),
        (
            lambda x, p: (torch.quantile(x.flatten(), p / 100), torch.quantile(x.flatten(), p / 100)),
            "lo is the (100 - p)-th percentile",
        ),
        (lambda x, p: (torch.quantile(x.flatten(), 1 - p), torch.quantile(x.flatten(), p)), "not a percentage"),
        (lambda x, p: (torch.quantile(x.flatten(), 0.001), torch.quantile(x.flatten(), 0.999)), "for p = 99.0"),
        (lambda x, p: x.max(), "answer with a pair"),
    ],
    "02.2": [
        ({"MinMax", "MovingAverage", "MSE"}, "not MovingAverage: in the last batch"),
        ({"MinMax"}, "missing MSE"),
        ({"MinMax", "MSE", "Histogram"}, "not Histogram"),
        ({"MinMax", "MSE", "Percentile"}, "not Percentile"),
        ({"minmax"}, "unknown observer name"),
        ("MinMax", "answer with a set"),
    ],
    "02.3": [
        ({"MinMax": (7.2 / 255, 1), "MovingAverage": (4.32 / 255, 54)}, "not the last batch's"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": ((6.6 + 0.28) / 255, 10)}, "c weights the *new* batch"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": (5.6 / 255, 27)}, "plain mean"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": (8 / 255, 32)}, "that is MinMax's range"),
        ({"MinMax": (8 / 256, 32), "MovingAverage": (4.32 / 255, 54)}, "not 256"),
        ({"MinMax": (8 / 255, -32), "MovingAverage": (4.32 / 255, 54)}, "sign wrong"),
        ({"MinMax": (8 / 255, 32), "MovingAverage": (4.32 / 255, 55)}, "MovingAverage: the zero point"),
        ((8 / 255, 32), "answer with a dict"),
    ],
    "03.1": [
        (
            [
                ["features.0", "features.1"],
                ["features.3", "features.4"],
                ["features.7", "features.8"],
                ["features.11", "features.12"],
            ],
            "fuse the ReLU too",
        ),
        (
            [
                ["features.0", "features.1", "features.2"],
                ["features.3", "features.4", "features.5"],
                ["features.6", "features.7", "features.8"],
                ["features.10", "features.11", "features.12"],
            ],
            "features.6 is a MaxPool2d",
        ),
        ([["features.0", "features.1", "features.2"], ["fc"]], "fc is followed by the DeQuantStub"),
        ([["features.2", "features.1", "features.0"]], "data-flow order"),
        ([["0", "1", "2"]], "dotted names"),
        ([["features.0", "features.1", "features.2"], ["features.3", "features.4", "features.5"]], "missing"),
        (["features.0", "features.1", "features.2"], "one list per group"),
    ],
    "03.2": [
        (({"x86", "fbgemm", "onednn"}, "b"), "not onednn: onednn keeps codes 0..255"),
        (({"fbgemm"}, "b"), "missing x86"),
        (({"x86", "fbgemm", "qnnpack"}, "b"), "not qnnpack"),
        (({"x86", "fbgemm"}, "a"), "vpmaddubsw's int16 pair sum"),
        (({"x86", "fbgemm"}, "d"), "see the same ReLUs"),
        (({"avx2"}, "b"), "unknown engine"),
        ("x86", "answer with a pair"),
    ],
    "03.3": [
        (lambda self, x: self.dequant(self.fc(self.flatten(self.relu(self.conv(x))))), "call self.quant(x) first"),
        (lambda self, x: self.fc(self.flatten(self.relu(self.conv(self.quant(x))))), "call self.dequant"),
        (
            lambda self, x: self.fc(self.dequant(self.flatten(self.relu(self.conv(self.quant(x)))))),
            "self.dequant must come last, after self.fc",
        ),
        (
            lambda self, x: self.dequant(self.fc(self.flatten(self.relu(self.quant(self.conv(x)))))),
            "self.quant must come before self.conv",
        ),
        (lambda self, x: self.dequant(self.fc(self.flatten(self.conv(self.quant(x))))), "never calls self.relu"),
        (
            lambda self, x: self.dequant(self.fc(self.flatten(self.relu(self.conv(self.quant(x))) + 1))),
            "after prepare/convert your forward fails",
        ),
    ],
    "04.1": [
        (lambda x, s, z, qmin, qmax: torch.ones_like(x), "the gradient is 0 where the code was clamped"),
        (lambda x, s, z, qmin, qmax: torch.zeros_like(x), "rounding's true gradient is 0"),
        (
            lambda x, s, z, qmin, qmax: ((x >= s * (qmin - z)) & (x <= s * (qmax - z))).float(),
            "tests the rounded code, not x",
        ),
        (
            lambda x, s, z, qmin, qmax: ((torch.round(x / s) + z > qmin) & (torch.round(x / s) + z < qmax)).float(),
            "qmin and qmax are valid codes",
        ),
        (
            lambda x, s, z, qmin, qmax: ((torch.round(x / s) >= qmin) & (torch.round(x / s) <= qmax)).float(),
            "add the zero point",
        ),
        (lambda x, s, z, qmin, qmax: [1, 0], "one gradient per element"),
    ],
    "04.2": [
        ({"weights"}, "missing bn_affine"),
        ({"weights", "bn_affine", "weight_qparams"}, "not weight_qparams"),
        ({"weights", "bn_affine", "bn_running_stats"}, "not bn_running_stats"),
        ({"weights", "bn_affine", "activation_qparams"}, "not activation_qparams"),
        ({"bn_affine"}, "missing weights"),
        ({"gamma"}, "unknown name"),
    ],
    "04.3": [
        ((2.6 / 255, 78), "reduce_range=True halves the custom range"),
        ((2.6 / 128, 39), "not 128"),
        ((2.6 / 127, 40), "the zero point is"),
        ((0.1, 39), "the scale should be"),
        (None, "answer with a pair"),
    ],
    "05.1": [
        ((10, 7), "prepare_fx fuses before it observes"),
        ((7, 7), "share their input's observer"),
        ((7, 5), "torch.flatten is in the x86 backend config"),
        ((4, 4), "that is the number of distinct observers"),
        ((6, 3), "count the observer on the input x"),
        (7, "answer with a pair"),
    ],
    "05.2": [
        (
            get_default_qconfig_mapping("x86").set_object_type(nn.Linear, None),
            "set_object_type(torch.ao.nn.intrinsic.LinearReLU, None)",
        ),
        (
            get_default_qconfig_mapping("x86").set_module_name("fc", None),
            "head is still int8: set_module_name matches one",
        ),
        (
            get_default_qconfig_mapping("x86").set_object_type(F.linear, None),
            "fc and head are still int8: set_object_type(F.linear, None) matches calls of the function",
        ),
        (
            get_default_qconfig_mapping("x86"),
            "fc and head are still int8: set the qconfig of each linear layer to None",
        ),
        (QConfigMapping(), "nothing is quantized"),
        (get_default_qconfig_mapping("x86").set_module_name("conv", None), "the conv must stay int8"),
        (None, "answer with a QConfigMapping"),
    ],
    "05.3": [
        ({"a", "d"}, "missing f: it fails"),
        ({"a", "f"}, "missing d: it fails"),
        ({"a", "d", "f", "g"}, "not g: symbolic_trace records it"),
        ({"a", "c", "d", "f"}, "not c: symbolic_trace records it: self.training is an ordinary bool"),
        ({"a", "d", "e", "f"}, "not e"),
        ({"A"}, "unknown letter"),
        ("adf", "answer with a set of letters"),
    ],
    "06.1": [
        (_ptq_pt2e(convert=False), "that is the prepared model"),
        (_ptq_pt2e(set_global=False), "X86InductorQuantizer() annotates nothing until it has a config"),
        (_ptq_pt2e(dynamic=False), "only accepts the batch size it was exported with"),
        (_ptq_pt2e(batches=0), "the observers saw no data"),
        (_ptq_pt2e(batches=1), "calibrate on every batch"),
        (_ptq_pt2e(module=False), "pass torch.export.export(...).module()"),
        (_ptq_pt2e(example_rows=1), "at least 2 rows"),
        ("ptq", "answer with a function"),
    ],
    "06.2": [
        ({"a"}, "missing d"),
        ({"a", "b", "d"}, "not b: convert_pt2e already fixed"),
        ({"a", "c", "d"}, "not c: prepare_pt2e already folded"),
        ({"a", "d", "e"}, "not e"),
        ({"d"}, "missing a"),
        ("ad", "answer with a set of letters"),
    ],
    "07.1": [
        (lambda n_in, n_out: n_in * n_out, "only the int8 weight codes"),
        (lambda n_in, n_out: 4 * n_out * (n_in + 1), "that is the fp32 size"),
        (lambda n_in, n_out: n_in * n_out + 4 * n_out + 8 * n_out, "are torch.float64 and the zero points torch.int64"),
        (lambda n_in, n_out: n_in * n_out + 4 * n_out + 16, "not one for the whole tensor"),
        (lambda n_in, n_out: n_in * n_out + 4 * n_out + 16 * n_in, "not 64"),
        (lambda n_in, n_out: n_in * n_out + 16 * n_out, "add the bias"),
        (lambda n_in, n_out: n_in * n_out + 17 * n_out, "the bias is not quantized"),
        (lambda n_in, n_out: "many", "return a number of bytes"),
    ],
    "07.2": [
        ((64, 4.0), "64 is the zmm"),
        ((8, 1.0), "int32 accumulators"),
        ((256 / 8 / 3, 4.0), "three-instruction sequence"),
        ((32, 2.0), "compare at the same width"),
        ((32, 3.0), "the ratio is int8 multiply-adds / fp32"),
        (32, "answer with a pair"),
    ],
    "07.3": [
        ({"a", "b", "c", "d", "e", "f"}, "not a, a Linear(64, 64) head"),
        ({"b", "c"}, "missing e"),
        ({"b", "e"}, "missing c, a Linear(512, 512)"),
        ({"b", "c", "e", "f"}, "not f"),
        ({"b", "c", "d", "e"}, "too few to repay"),
        ({"z"}, "unknown letter"),
    ],
    "08.1": [
        ({"b"}, "missing a (x * 0.125 (scale q)): it fails, aten::mul.Tensor has no QuantizedCPU kernel"),
        ({"a", "b", "d", "e"}, "missing c (x.softmax(-1))"),
        ({"a", "b", "c", "e"}, "missing d (a + b)"),
        (
            {"a", "b", "c", "d", "e", "f"},
            "not f (F.gelu): it runs on quantized tensors: its aten op has a QuantizedCPU kernel",
        ),
        (
            {"a", "b", "c", "d", "e", "g"},
            "not g (x.reshape(...)): it runs on quantized tensors: it has no QuantizedCPU kernel of its own",
        ),
        ({"a", "b", "c", "d", "e", "i"}, "not i"),
        ({"a", "c", "d", "e"}, "aten::bmm has no QuantizedCPU kernel"),
        (None, "answer with a set of letters"),
    ],
    "08.2": [
        (lambda a, b, s, z: a.dequantize() @ b.dequantize(), "quantize the float32 product"),
        (
            lambda a, b, s, z: torch.quantize_per_tensor(
                (a.int_repr().float() @ b.int_repr().float()) * a.q_scale() * b.q_scale(), s, z, torch.quint8
            ),
            "subtract each operand's zero point",
        ),
        (
            lambda a, b, s, z: torch.quantize_per_tensor(
                a.dequantize() @ b.dequantize(), a.q_scale(), a.q_zero_point(), torch.quint8
            ),
            "the output carries its own qparams",
        ),
        (
            lambda a, b, s, z: torch.clamp(torch.trunc(a.dequantize() @ b.dequantize() / s) + z, 0, 255).to(
                torch.uint8
            ),
            "don't truncate",
        ),
        (
            lambda a, b, s, z: torch.quantize_per_tensor(a.dequantize() @ b.dequantize(), s, z, torch.qint8),
            "got torch.qint8",
        ),
        (lambda a, b, s, z: torch.ops.quantized.matmul(a, b, s, z)[0], "return a quint8 tensor of shape"),
        (
            lambda a, b, s, z: torch.quantize_per_tensor(a.dequantize() @ b.dequantize() * 1.01, s, z, torch.quint8),
            "codes differ from quantized::matmul",
        ),
    ],
    "08.3": [
        (lambda sq, sk, so, d: sq * sk / so, "you left out the attention scale"),
        (lambda sq, sk, so, d: sq * sk * d**0.5 / so, "not multiplied"),
        (lambda sq, sk, so, d: sq * sk / d / so, "not one over head_dim"),
        (lambda sq, sk, so, d: sq * sk * d**-0.5, "divide by the output scale s_o as well"),
        (lambda sq, sk, so, d: sq * sk * d**-0.5 * so, "don't multiply"),
        (lambda sq, sk, so, d: so * d**0.5 / (sq * sk), "upside down"),
        (lambda sq, sk, so, d: 2 * sq * sk * d**-0.5 / so, "output codes differ"),
        (lambda sq, sk, so, d: "M", "return a number"),
    ],
    "10.1": [
        (lambda a, w, al: a ** (1 - al) / w**al, "the exponents are swapped"),
        (lambda a, w, al: w ** (1 - al) / a**al, "upside down"),
        (lambda a, w, al: a**al * w ** (1 - al), "divide by the weight term"),
        (lambda a, w, al: a / w, "alpha is the exponent"),
        (lambda a, w, al: (a / w).sqrt(), "you used alpha = 0.5"),
        (lambda a, w, al: (a.max() / w.max()) ** 0.5, "one factor per input channel"),
        (lambda a, w, al: torch.zeros_like(a), "positive and finite"),
        (lambda a, w, al: a**al / w ** (1 - al) * 1.01, "equation (1) gives"),
        (lambda a, w, al: 1 / 0, "raised ZeroDivisionError"),
    ],
    "10.2": [
        (lambda m: m.float()[:, None, None, :], "is not enough"),
        (lambda m: torch.where(m.bool(), torch.finfo(torch.float32).min, 0.0)[:, None, None, :], "inverted"),
        (lambda m: torch.where(m.bool(), 0.0, -1e9)[:, None, :, None], "query axis"),
        (lambda m: torch.where(m.bool(), 0.0, -1e9), "does not broadcast"),
        (lambda m: m.bool()[:, None, None, :], "return a float tensor"),
        (lambda m: [0.0], "return a tensor"),
    ],
    "10.3": [
        ({"a", "b", "c", "g"}, "not b: it dequantizes"),
        ({"a", "c"}, "missing g"),
        ({"a", "c", "d", "g"}, "not d: the cause is the pooler"),
        ({"a", "c", "e", "g"}, "not e"),
        ({"a", "c", "f", "g"}, "not f"),
        ("acg", "answer with a set"),
    ],
    "13.1": [
        (_capstone("q/dq"), "you returned convert_pt2e's quantize/dequantize graph"),
        (_capstone("no freezing"), "with freezing off"),
        (_capstone("no calibration"), "an observer that saw no data"),
        (_capstone("unnormalised"), "the activation that costs the most is the input of features.0.0"),
        (_capstone("float"), "your result is a float DigitsDSNet"),
        (_capstone("in place"), "changed the model it was given"),
        (lambda model, calibration, example: None, "return something callable"),
        (lambda model, calibration, example: lambda x: model(x).argmax(1), "float logits of shape (64, 10)"),
        (lambda model, calibration, example: calibration[99], "raised IndexError"),
        ("pt2e", "answer with a function quantize("),
    ],
    "09.1": [
        ((0.8 / 127.5, 0.8 / 255), "swapped"),
        ((0.8 / 127.5, 0.8 / 127.5), "falls back to affine"),
        ((0.8 / 255, 0.8 / 127), "not 127"),
        (0.5, "answer with a pair"),
    ],
    "09.2": [
        (lambda i: i, "that is the fake path"),
        (lambda i: (254 * i) // 255, "don't truncate"),
        (lambda i: round(i * 255 / 254), "the converted model outputs"),
    ],
    "11.1": [
        (lambda w1, w2: _safe(_r1(w1) / _r2(w2)), "swap the two ranges"),
        (lambda w1, w2: _safe(torch.sqrt(_r2(w2) / _r1(w1))), "upside down"),
        (lambda w1, w2: torch.sqrt(_r1(w1) / _r2(w2)), "use s = 1"),
        (lambda w1, w2: _safe(torch.sqrt(_r1(w1) / _r2(w2, 0))), "w2's input channels are its dim 1"),
        (lambda w1, w2: _safe(torch.sqrt(_r1(w1) / _r2(w2)))[:1], "one scale per channel"),
        (lambda w1, w2: 1.0, "one scale per channel"),
        (lambda w1, w2: _safe(torch.sqrt(_r1(w1) / _r2(w2))) * 1.1, "the ranges of channel i must be equal"),
    ],
    "11.2": [
        (_shift_answer("sign"), "the sign is flipped"),
        (_shift_answer("mean"), "that is the mean output of the quantized layer"),
        (_shift_answer("nopad"), "the padding's zeros change the mean"),
        (_shift_answer("nogroups"), "use the layer's own stride, padding, dilation and groups"),
        (_shift_answer("shape"), "one value per output channel"),
        ("shift", "answer with a function"),
    ],
    "12.1": [
        (_gelu_answer(zp_in=False), "subtract the input zero point"),
        (_gelu_answer(zp_out=False), "add the output zero point"),
        (_gelu_answer(rnd=torch.trunc), "don't truncate"),
        (_gelu_answer(approximate="tanh"), "not the tanh approximation"),
        (_gelu_answer(clamp=False), "clamp the codes to [0, 255]"),
        (_gelu_answer(dtype=torch.int64), "return them as torch.uint8"),
        (lambda *a: torch.zeros(10), "a tensor of shape (256,)"),
        ("table", "answer with a function"),
    ],
    "11.3": [
        (_budget_answer("value"), "you compared the point estimate"),
        (_budget_answer("high"), "the high end is the optimistic one"),
        (_budget_answer(strict=True), "(>=, not >)"),
        (_budget_answer(shift=1), "off by one"),
        (_budget_answer(none=-1), "return None"),
        (None, "answer with a function"),
    ],
    "14.1": [
        (_unused_answer(buffers=False), "state_dict() holds buffers"),
        (_unused_answer(modules=False), "belong to a submodule the graph calls"),
        (_unused_answer(dot=False), "compare whole name components"),
        (_unused_answer(get_attr=False), "is read by a get_attr node"),
        (lambda gm: "fp32_weight", "return a list of names"),
        (None, "answer with a function"),
    ],
}


@pytest.mark.parametrize("exercise", sorted(exercises.exercises()))
def test_reference_solution_passes(exercise):
    fb = exercises.check(exercise, exercises.solution(exercise))
    assert fb.ok, str(fb)
    assert str(fb).endswith("correct.")


@pytest.mark.parametrize("exercise", sorted(exercises.exercises()))
def test_every_exercise_has_wrong_answers_tested(exercise):
    assert WRONG.get(exercise), f"add typical wrong answers for {exercise} to WRONG"


@pytest.mark.parametrize("exercise, answer, message", [(e, a, m) for e, items in WRONG.items() for a, m in items])
def test_wrong_answers_get_specific_feedback(exercise, answer, message):
    fb = exercises.check(exercise, answer)
    assert not fb.ok
    assert message in str(fb), str(fb)


def test_unanswered_exercise_says_so():
    def todo(lo, hi):
        raise NotImplementedError

    assert "not answered yet" in str(exercises.check("01.1", todo))


def test_02_2_answer_holds_on_the_notebooks_activations():
    """02.2's answer, executed on notebook 02's data (features.13 of the digits CNN, 4 batches of 32 images):
    a 100x outlier in the last batch costs MinMax and MSE > 20 dB, the moving average about one bit, the others
    little."""
    from qlab import checkpoints, data, models
    from qlab import observers as qobs

    cnn = checkpoints.load("digits_cnn")
    calib = models.capture_activations(cnn, data.calibration_batches(128, size=16), ["features.13"])["features.13"]
    x_test, _ = data.digits("test", size=16).tensors
    heldout = models.capture_activations(cnn, [x_test], ["features.13"])["features.13"]
    obs = {
        "MinMax": qobs.MinMaxObserver,
        "MovingAverage": qobs.MovingAverageMinMaxObserver,
        "Histogram": qobs.HistogramObserver,
        "Percentile": qobs.PercentileObserver,
        "MSE": qobs.MSEObserver,
    }
    assert set(obs) == set(nb02.OBSERVERS_02)
    base = qobs.compare_observers(obs, torch.split(calib, 32), heldout)
    spiked = calib.clone()
    spiked.view(-1)[-1] = 100 * float(calib.abs().max())
    rep = qobs.compare_observers(obs, torch.split(spiked, 32), heldout)
    lost = {n: base[n]["sqnr_db"] - rep[n]["sqnr_db"] for n in obs}
    assert {n for n, v in lost.items() if v > 20} == exercises.solution("02.2"), lost
    assert 3 < lost["MovingAverage"] < 10 and 12 < rep["MovingAverage"]["hi"] < 14, (lost, rep["MovingAverage"]["hi"])
    assert max(abs(lost["Histogram"]), abs(lost["Percentile"])) < 1.5, lost


def test_04_2_truth_is_measured():
    assert nb04._frozen_qat_step() == exercises.solution("04.2")


def test_unknown_exercise_is_named():
    with pytest.raises(ValueError, match="exercise must be one of"):
        exercises.check("99.9", None)


def test_05_1_truth_is_measured():
    """prepare_fx on Net05: 7 observer calls, 4 distinct observers, 3 module calls fused away (bn1, relu1, relu2)."""
    assert nb05._observers_05() == (*exercises.solution("05.1"), 3)


def test_08_3_multiplier_reproduces_the_float_path():
    """The reference multiplier turns the int32 accumulator into the codes of quantize(q·kᵀ·c, s_o) (float rounding
    may move a rare tie by one code)."""
    for s_q, s_k, s_o, d in [(0.02, 0.05, 0.1, 16), (0.013, 0.031, 0.02, 64)]:
        mine, want = nb08._requant_codes_08(exercises.solution("08.3")(s_q, s_k, s_o, d), s_q, s_k, s_o, d)
        assert (mine != want).float().mean() < 0.01 and (mine - want).abs().max() <= 1
