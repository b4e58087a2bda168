"""Exercises of ``notebooks/03-*.ipynb`` (eager-mode PTQ); reference answers in ``notebooks/solutions/03-*.py``."""

from __future__ import annotations

import torch

from .._env import scoped
from ._core import _call, exercise

# the checkers register themselves with @exercise; the names below are what a notebook prints or uses
__all__ = ["StubNet"]


@exercise("03.1", "the module groups fuse_modules should fuse in DigitsCNN")
def _check_03_1(groups) -> list[str]:
    from torch import nn

    from ..models import DigitsCNN

    model = DigitsCNN()
    modules = dict(model.named_modules())
    shape = "a list of groups, each a list of module names, e.g. [['features.0', 'features.1', 'features.2'], ...]"
    if isinstance(groups, str) or not isinstance(groups, (list, tuple)) or not groups:
        return [f"answer with {shape}, got {groups!r}"]
    if all(isinstance(g, str) for g in groups):
        return [f"give one list per group, not one flat list of names: {shape}"]
    if not all(isinstance(g, (list, tuple)) and all(isinstance(n, str) for n in g) for g in groups):
        return [f"answer with {shape}, got {groups!r}"]
    kinds = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu"}
    problems: list[str] = []
    for g in groups:
        unknown = [n for n in g if n not in modules or n == ""]
        if unknown:
            problems.append(
                f"{g}: no module named {unknown[0]!r}; use the dotted names of model.named_modules(), e.g. 'features.0'"
            )
            continue
        types = [type(modules[n]) for n in g]
        other = [(n, t.__name__) for n, t in zip(g, types, strict=False) if t not in kinds]
        if other:
            n, t = other[0]
            why = (
                "pooling runs on int8 tensors as it is and has nothing to fold"
                if "Pool" in t
                else "fc is followed by the DeQuantStub, not a ReLU: there is nothing to fuse it with"
                if t == "Linear"
                else "it is not part of a Conv-BN-ReLU block"
            )
            problems.append(f"{g}: {n} is a {t}; {why}")
            continue
        tags = [kinds[t] for t in types]
        idx = [int(n.split(".")[-1]) for n in g]
        if sorted(tags) == sorted(["conv", "bn", "relu"]) and tags != ["conv", "bn", "relu"]:
            problems.append(f"{g}: list a group in data-flow order, conv, bn, relu (you have {', '.join(tags)})")
        elif tags == ["conv", "bn"] and idx == [idx[0], idx[0] + 1]:
            problems.append(
                f"{g}: fuse the ReLU too (features.{idx[0] + 2}): in the fused int8 conv it costs nothing, the "
                "output is requantized with zero point 0 and clamped (section 2)"
            )
        elif tags == ["conv", "bn", "relu"] and idx != [idx[0], idx[0] + 1, idx[0] + 2]:
            problems.append(f"{g}: a conv is fused with the BN and ReLU that directly follow it")
        elif tags != ["conv", "bn", "relu"]:
            problems.append(f"{g}: a group is [conv, bn, relu] (you have {', '.join(tags)})")
    if problems:
        return problems
    got = sorted(list(g) for g in groups)
    want = sorted(model.fuse_spec())
    if len(got) != len(set(map(tuple, got))):
        return ["each group once: you listed a group twice"]
    missing = [g for g in want if g not in got]
    if missing:
        return [
            f"missing {missing}: every one of the {len(want)} convolutions has its own BN and ReLU "
            "(count past the MaxPool2d layers features.6 and features.10)"
        ]
    return []


REDUCE_RANGE_REASONS_03 = {
    "a": "8-bit activations would overflow the int32 accumulator of large layers",
    "b": "vpmaddubsw adds pairs of uint8 x int8 products into a saturating int16; 7-bit activations cannot overflow it",
    "c": "the zero point needs a spare bit",
    "d": "ReLU outputs are non-negative, so the eighth bit would be wasted",
}


@exercise("03.2", "which engines' default qconfig uses reduce_range, and why")
def _check_03_2(answer) -> list[str]:
    import torch.ao.quantization as tq

    try:
        engines, reason = answer
        engines = {engines} if isinstance(engines, str) else set(engines)
    except Exception:
        return [f"answer with a pair (set of engine names, reason letter), e.g. ({{'qnnpack'}}, 'c'); got {answer!r}"]
    all_engines = [e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in torch.backends.quantized.supported_engines]
    unknown = engines - set(all_engines)
    if unknown:
        return [f"unknown engine(s) {sorted(unknown)}: choose from {all_engines}"]
    truth = {e for e in all_engines if tq.get_default_qconfig(e).activation().reduce_range}
    why = {
        "x86": "x86 picks FBGEMM or oneDNN kernels per layer, so its default keeps FBGEMM's safe 7-bit activations",
        "fbgemm": "fbgemm is the engine whose AVX2 kernels multiply with vpmaddubsw",
        "onednn": "onednn keeps codes 0..255: it counts on AVX-512 VNNI, whose vpdpbusd adds four products straight "
        "into an int32 and cannot saturate",
        "qnnpack": "qnnpack (written for ARM) keeps codes 0..255: its kernels do not use vpmaddubsw",
    }
    problems = [f"missing {e}: {why[e]}" for e in all_engines if e in truth - engines]
    problems += [f"not {e}: {why[e]}" for e in all_engines if e in engines - truth]
    reason_why = {
        "a": "the int32 accumulator is wide enough; the narrow step is vpmaddubsw's int16 pair sum: "
        "2 x 255 x 127 = 64 770 > 32 767, while 7-bit codes give at most 2 x 127 x 128 = 32 512",
        "c": "an affine zero point is one of the codes 0..255 itself; it needs no extra bit",
        "d": "onednn and qnnpack see the same ReLUs and keep 8 bits, and the QuantStub's input is signed; "
        "the reason is an int16 overflow in the x86 kernels",
    }
    if reason not in REDUCE_RANGE_REASONS_03:
        problems.append(f"reason must be one of {sorted(REDUCE_RANGE_REASONS_03)}, got {reason!r}")
    elif reason != "b":
        problems.append(f"reason {reason!r}: {reason_why[reason]}")
    return problems


class StubNet(torch.nn.Module):
    """The model of exercise 03.3: ``forward`` is the learner's."""

    def __init__(self):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.relu = torch.nn.ReLU()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)
        self.dequant = DeQuantStub()


@exercise("03.3", "place QuantStub and DeQuantStub in a model's forward")
def _check_03_3(forward) -> list[str]:
    import torch.ao.quantization as tq

    from ..observers import MinMaxObserver, PerChannelMinMaxObserver

    if not callable(forward):
        return [
            "answer with a function forward(self, x) using self.quant, self.conv, self.relu, self.flatten, "
            "self.fc and self.dequant"
        ]
    net_cls = type("Net", (StubNet,), {"forward": forward})
    with scoped(seed=0):  # leave the notebook's random state alone
        model = net_cls().eval()
        x = torch.randn(4, 1, 8, 8)
    calls: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: calls.append(name))
        for name, m in model.named_children()
    ]
    try:
        _, err = _call(model, x)
    finally:
        for h in hooks:
            h.remove()
    if err:
        return [err]
    names = ["quant", "conv", "relu", "flatten", "fc", "dequant"]
    missing = [n for n in names if n not in calls]
    twice = sorted({n for n in calls if calls.count(n) > 1})
    if "quant" in missing:
        return [
            "call self.quant(x) first: after convert it is the Quantize module that turns the float input into "
            "quint8; without it the int8 conv receives a float tensor"
        ]
    if "dequant" in missing:
        return [
            "call self.dequant(...) on the logits: after convert the int8 Linear returns a quantized tensor, "
            "and DeQuantize turns it back into float"
        ]
    if missing:
        return [f"use every module once: your forward never calls self.{missing[0]}"]
    if twice:
        return [f"call each module once: self.{twice[0]} ran {calls.count(twice[0])} times"]
    if calls[0] != "quant":
        return [
            f"self.quant must come before self.{calls[0]}: everything between the stubs runs in int8 after convert, "
            f"so self.{calls[0]} would get the float input"
        ]
    if calls[-1] != "dequant":
        return [
            f"self.dequant must come last, after self.{calls[-1]}: after convert self.{calls[-1]} is an int8 module "
            "and would receive a float tensor"
        ]
    if calls != names:
        return [f"keep the model's order conv, relu, flatten, fc between the stubs; your forward calls {calls}"]
    # the real eager flow on this forward: it must run and return float logits
    with scoped(engine="x86"):
        model.qconfig = tq.QConfig(
            activation=MinMaxObserver.with_args(reduce_range=True),
            weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
        )
        prepared = tq.prepare(model)
        prepared(x)
        int8 = tq.convert(prepared)
        out, err = _call(int8, x)
    if err:
        return [
            f"after prepare/convert your forward fails: between the stubs every tensor is quantized, and only "
            f"modules and ops with int8 kernels may touch it ({err})"
        ]
    if out.is_quantized:
        return ["the converted model returns a quantized tensor: end with self.dequant"]
    return []
