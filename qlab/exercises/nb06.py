"""Exercises of ``notebooks/06-*.ipynb`` (PT2E); reference answers in ``notebooks/solutions/06-*.py``."""

from __future__ import annotations

import functools

import torch

from .._env import scoped
from ._core import _call, _describe, _letter_set, exercise

__all__ = []


class Net06(torch.nn.Module):
    """The model of exercise 06.1: two Conv-BN-ReLU blocks, a global average pool and a linear classifier."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _data_06():
    """Net06 (seeded, eval, batch-norm statistics that are not the identity), two calibration batches of 8
    and a test batch of 5 (another batch size than the calibration's)."""
    with scoped(engine="x86", seed=0):
        model = Net06().eval()
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
        calibration = [torch.randn(8, 1, 8, 8) for _ in range(2)]
        x = torch.randn(5, 1, 8, 8)
    return model, calibration, x


@functools.lru_cache(maxsize=2)
def _reference_06(batches: int = 2):
    """``qlab.pt2e.pt2e_int8`` (export with a dynamic batch, X86InductorQuantizer, prepare_pt2e, calibrate,
    convert_pt2e) on the first ``batches`` calibration batches: (first activation (scale, zero point), outputs)."""
    from ..pt2e import pt2e_int8

    model, calibration, x = _data_06()
    converted = pt2e_int8(model, calibration[:batches])
    with torch.no_grad():
        return _first_qparams_06(converted), converted(x)


def _first_qparams_06(gm) -> tuple[float, int] | None:
    """The (scale, zero point) of the first ``quantize_per_tensor`` in a converted graph (the input's)."""
    for node in gm.graph.nodes:
        if (
            node.op == "call_function"
            and "quantize_per_tensor" in str(node.target)
            and "dequantize" not in str(node.target)
        ):
            return float(node.args[1]), int(node.args[2])
    return None


@exercise("06.1", "PT2E post-training quantization in one function: export, annotate, prepare, calibrate, convert")
def _check_06_1(fn) -> list[str]:
    from collections import Counter

    from ..fxviz import node_kinds

    if not callable(fn):
        return ["answer with a function ptq_pt2e(model, calibration) -> the GraphModule convert_pt2e returns"]
    model, calibration, x = _data_06()
    got, err = _call(fn, model, calibration)
    if err:
        if "ExportedProgram" in err:
            return [
                "prepare_pt2e takes a GraphModule, not the ExportedProgram: pass "
                f"torch.export.export(...).module() ({err})"
            ]
        if "specialized it to be a constant" in err or "Constraints violated" in err:
            return [
                "export with an example batch of at least 2 rows (e.g. calibration[0]): with 1 row export "
                f"specialises the batch dimension to 1 ({err})"
            ]
        return [err]
    if isinstance(got, torch.export.ExportedProgram) or not isinstance(got, torch.fx.GraphModule):
        return [f"return the GraphModule that convert_pt2e returns, got {type(got).__name__}"]
    kinds = Counter(node_kinds(got).values())
    if kinds["observer"]:
        return [
            f"the graph still holds {kinds['observer']} observers: that is the prepared model; after calibrating, "
            "return convert_pt2e(prepared)"
        ]
    if not kinds["quantize"]:
        return [
            "nothing was quantized: X86InductorQuantizer() annotates nothing until it has a config: "
            ".set_global(get_default_x86_inductor_quantization_config())"
        ]
    try:
        with torch.no_grad():
            out = got(x)
    except Exception as e:
        err = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if "Guard failed" in err or "size()[0]" in err:
            return [
                f"your int8 graph only accepts the batch size it was exported with, not a batch of {x.shape[0]}: "
                "declare dimension 0 dynamic, dynamic_shapes={'x': {0: torch.export.Dim('batch', max=1024)}} "
                f"(section 1) ({err})"
            ]
        return [f"calling your converted graph on a batch of {x.shape[0]} fails: {err}"]
    ref_qparams, ref_out = _reference_06(2)
    if isinstance(out, torch.Tensor) and out.shape == ref_out.shape and torch.equal(out, ref_out):
        return []
    qparams = _first_qparams_06(got)
    if qparams == (1.0, 0):
        return [
            "the observers saw no data (convert used their defaults, scale 1.0 and zero point 0): run every "
            "calibration batch through the prepared model before convert_pt2e"
        ]
    if qparams == _reference_06(1)[0]:
        return ["calibrate on every batch: your input scale and zero point are those of calibration[0] alone"]
    if not isinstance(out, torch.Tensor) or out.shape != ref_out.shape:
        return [f"your graph returns {_describe(out)}, the model's logits have shape {tuple(ref_out.shape)}"]
    return [
        f"your int8 outputs differ from export -> prepare_pt2e(X86InductorQuantizer with the default config) -> "
        f"every calibration batch -> convert_pt2e by up to {float((out - ref_out).abs().max()):.3g}; the input's "
        f"(scale, zero point) is {qparams}, it should be {ref_qparams}"
    ]


#: Exercise 06.2: statements about ``torch._inductor.config.freezing``, and why each is true or false.
FREEZING_06 = {
    "a": (
        True,
        "with freezing Inductor treats the weights as constants, so it can fold each int8 weight and its "
        "dequantize into a pre-packed oneDNN weight and fuse dequantize -> conv -> relu -> quantize into one "
        "int8 convolution (section 6)",
    ),
    "b": (
        False,
        "convert_pt2e already fixed every scale and zero point: the converted graph has no observers left to freeze",
    ),
    "c": (
        False,
        "prepare_pt2e already folded each batch-norm into its convolution (section 2); freezing is a "
        "compiler setting, not freeze_bn_stats",
    ),
    "d": (
        True,
        "without freezing the weights stay graph inputs, the int8 patterns do not match, and the graph runs "
        "as float ops plus quantize/dequantize work (notebook 07, section 8, measures what that costs)",
    ),
    "e": (
        False,
        "the quantizer annotated the graph at prepare_pt2e; torch.compile sees the finished q/dq graph and "
        "freezing changes how Inductor lowers it, not what was quantized",
    ),
}


@exercise("06.2", "what torch._inductor.config.freezing does for a PT2E int8 model")
def _check_06_2(answer) -> list[str]:
    letters = sorted(FREEZING_06)
    got, problem = _letter_set(answer, letters, "the true statements")
    if problem:
        return [problem]
    problems = []
    for letter in letters:
        true, why = FREEZING_06[letter]
        if true and letter not in got:
            problems.append(f"missing {letter}: true, {why}")
        elif not true and letter in got:
            problems.append(f"not {letter}: {why}")
    return problems
