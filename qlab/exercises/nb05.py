"""Exercises of ``notebooks/05-*.ipynb`` (FX graph mode); reference answers in ``notebooks/solutions/05-*.py``."""

from __future__ import annotations

import functools

import torch

from .._env import scoped
from ._core import _letter_set, _pair, exercise

# the checkers register themselves with @exercise; the names below are what a notebook prints or uses
__all__ = ["Net05", "Head05", "trace_cases_05"]


def _prepare_fx_x86(model: torch.nn.Module, mapping, example: torch.Tensor):
    """``prepare_fx`` on a copy of ``model`` with ``mapping`` and the x86 backend config, as notebook 05 does."""
    import copy

    from torch.ao.quantization.backend_config.x86 import get_x86_backend_config

    # quantize_fx first: in torch 2.15 the backend_config module alone fails to import (notebook 05, section 3)
    from torch.ao.quantization.quantize_fx import prepare_fx

    return prepare_fx(copy.deepcopy(model), mapping, (example,), backend_config=get_x86_backend_config())


class Net05(torch.nn.Module):
    """The model of exercise 05.1: conv-bn-relu, max-pool, conv-relu, global average pool, ``torch.flatten``, fc."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.gap(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


@functools.lru_cache(maxsize=1)
def _observers_05() -> tuple[int, int, int]:
    """``prepare_fx`` with the x86 defaults on :class:`Net05`: (observer calls, distinct observers,
    module calls that fusion removed)."""
    import torch.ao.quantization as tq

    from ..fxviz import node_kinds

    with scoped(engine="x86", seed=0):
        model = Net05().eval()
        prepared = _prepare_fx_x86(model, tq.get_default_qconfig_mapping("x86"), torch.randn(2, 1, 8, 8))
    kinds = node_kinds(prepared)
    calls = [n for n, k in kinds.items() if k == "observer"]
    distinct = {id(prepared.get_submodule(n.target)) for n in calls}
    module_calls = lambda gm: sum(1 for n in gm.graph.nodes if n.op == "call_module")  # noqa: E731
    fused_away = module_calls(torch.fx.symbolic_trace(model)) - (module_calls(prepared) - len(calls))
    return len(calls), len(distinct), fused_away


@exercise("05.1", "observer calls and distinct observers prepare_fx puts into a small CNN")
def _check_05_1(answer) -> list[str]:
    (calls, distinct), bad = _pair(answer, "(observer calls, distinct observers)")
    if bad:
        return [bad]
    ref_calls, ref_distinct, fused = _observers_05()
    problems = []
    if calls != ref_calls:
        if calls == ref_calls + fused:
            problems.append(
                f"calls: prepare_fx fuses before it observes: conv1+bn1+relu1 and conv2+relu2 each become one "
                f"ConvReLU2d with one observer on its output, so {fused} of your observer calls do not exist"
            )
        elif calls == ref_calls - 1:
            problems.append(
                "calls: count the observer on the input x too: it gives the quantize at the model's entry its scale"
            )
        elif calls == ref_distinct:
            problems.append(
                "calls: that is the number of distinct observers; a shared observer is called once for every "
                "tensor it watches (the pools' and flatten's outputs too)"
            )
        else:
            problems.append(
                f"calls: one observer call on the input, one after each fused conv block, one after each op "
                f"that shares its input's observer (pool, gap, torch.flatten), one after fc; you gave {calls:g}"
            )
    if distinct != ref_distinct:
        if distinct == ref_calls or distinct == calls:
            problems.append(
                "distinct: max-pool, adaptive average pool and torch.flatten share their input's observer "
                "(OUTPUT_SHARE_OBSERVER_WITH_INPUT in the backend config, section 3): their calls reuse an "
                "observer instead of adding one"
            )
        elif distinct == ref_distinct + 1:
            problems.append(
                "distinct: one observer too many: torch.flatten is in the x86 backend config (only the module "
                "nn.Flatten was missing, section 3), so it shares its input's observer like the pools"
            )
        elif distinct > ref_distinct:
            problems.append(
                "distinct: the ops that share (max-pool, adaptive average pool, torch.flatten) add no observer "
                "of their own; count the input, the fused conv blocks and fc"
            )
        else:
            problems.append("distinct: the input, every fused conv block and fc each have an observer of their own")
    return problems


class Head05(torch.nn.Module):
    """The model of exercise 05.2: a conv block and a two-layer classifier head (``fc``, ``head``)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv, self.relu = nn.Conv2d(1, 4, 3), nn.ReLU()
        self.fc, self.relu2 = nn.Linear(4 * 6 * 6, 16), nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.flatten(self.relu(self.conv(x)), 1)
        return self.head(self.relu2(self.fc(x)))


@exercise("05.2", "a QConfigMapping: x86 defaults, every linear layer left in float")
def _check_05_2(mapping) -> list[str]:
    import torch.ao.quantization as tq
    from torch.ao.quantization.quantize_fx import convert_fx

    from ..fxviz import _is_quantized_module

    if not isinstance(mapping, tq.QConfigMapping):
        return [f"answer with a QConfigMapping (start from get_default_qconfig_mapping('x86')), got {mapping!r}"]
    with scoped(engine="x86", seed=0):
        model = Head05().eval()
        x = torch.randn(4, 1, 8, 8)
        try:
            prepared = _prepare_fx_x86(model, mapping, x)
            fused = {name: type(prepared.get_submodule(name)) for name in ("fc", "head")}  # before convert swaps them
            with torch.no_grad():
                prepared(x)
            converted = convert_fx(prepared)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return [f"prepare_fx/convert_fx fail with your mapping: {type(e).__name__}: {msg}"]
    int8 = {name: _is_quantized_module(converted.get_submodule(name)) for name in ("conv", "fc", "head")}
    if not int8["conv"]:
        if mapping.global_qconfig is None:
            return [
                "nothing is quantized, the conv neither: QConfigMapping() (or set_global(None)) has no global qconfig; "
                "start from get_default_qconfig_mapping('x86') and take only the linear layers out"
            ]
        return ["the conv must stay int8: leave only the linear layers in float"]
    by_type, by_name = mapping.object_type_qconfigs, mapping.module_name_qconfigs
    reasons: dict[str, list[str]] = {}  # why a layer is still int8 -> the layers
    for name in ("fc", "head"):
        if not int8[name]:
            continue
        kind = fused[name]
        if kind is not torch.nn.Linear and by_type.get(torch.nn.Linear, "unset") is None:
            full = f"{kind.__module__.split('.modules')[0]}.{kind.__name__}"
            why = (
                f"prepare_fx fused {name} with the ReLU after it into a {full} before it looked up the qconfigs "
                f"(section 4), and set_object_type(nn.Linear, None) does not cover the fused type: also "
                f"set_object_type({full}, None), or name the layers (set_module_name)"
            )
        elif by_name and name not in by_name:
            why = f"set_module_name matches one module by its name, and {name!r} is not among yours ({sorted(by_name)})"
        elif by_type.get(torch.nn.functional.linear, "unset") is None:
            why = (
                "set_object_type(F.linear, None) matches calls of the function F.linear; "
                "the model calls nn.Linear modules"
            )
        else:
            why = (
                "set the qconfig of each linear layer to None (set_object_type for its module type, or set_module_name)"
            )
        reasons.setdefault(why, []).append(name)
    return [
        f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} still int8: {why}"
        for why, names in reasons.items()
    ]


def _trace_a(self, x):
    if x.sum() > 0:
        x = -x
    return x


def _trace_b(self, x):
    for _ in range(3):
        x = torch.relu(x) + 1
    return x


def _trace_c(self, x):
    if self.training:
        x = x * 2
    return x


def _trace_d(self, x):
    if x.shape[0] > 1:
        x = x * 2
    return x


def _trace_e(self, x):
    return torch.where(x.sum() > 0, -x, x)


def _trace_f(self, x):
    return x / len(x)


def _trace_g(self, x):
    return x[:, : x.shape[1] // 2]


#: Exercise 05.3: forward methods; which of them can ``torch.fx.symbolic_trace`` record?
TRACE_CASES_05 = {
    "a": _trace_a,
    "b": _trace_b,
    "c": _trace_c,
    "d": _trace_d,
    "e": _trace_e,
    "f": _trace_f,
    "g": _trace_g,
}


def trace_cases_05() -> str:
    """The forwards of exercise 05.3 as source text, one per letter (for the notebook)."""
    import inspect
    import textwrap

    out = []
    for letter, fwd in TRACE_CASES_05.items():
        body = textwrap.dedent("".join(inspect.getsource(fwd).splitlines(True)[1:]))
        out.append(f"({letter}) def forward(self, x):\n" + textwrap.indent(body, "        "))
    return "\n".join(out)


@functools.lru_cache(maxsize=1)
def _trace_results_05() -> dict[str, str]:
    """Letter -> the error ``symbolic_trace`` raises on that forward, or '' if it records it."""
    out = {}
    for letter, fwd in TRACE_CASES_05.items():
        module = type(f"Case_{letter}", (torch.nn.Module,), {"forward": fwd})()
        try:
            torch.fx.symbolic_trace(module)
            out[letter] = ""
        except Exception as e:
            out[letter] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return out


@exercise("05.3", "which forwards symbolic tracing cannot record")
def _check_05_3(answer) -> list[str]:
    letters = sorted(TRACE_CASES_05)
    got, problem = _letter_set(answer, letters, "the forwards that fail")
    if problem:
        return [problem]
    truth = _trace_results_05()
    why = {
        "a": "x.sum() > 0 is a proxy with no value: `if` asks it for a bool",
        "b": "range(3) is a plain Python range: the loop runs three times during tracing and the graph holds three "
        "relu/add steps",
        "c": "self.training is an ordinary bool attribute of the module, not a proxy: tracing takes the branch it "
        "has now",
        "d": "symbolic_trace has no concrete shapes: x.shape[0] is a proxy too, and so is the comparison",
        "e": "torch.where is an ordinary op with a tensor condition: it is recorded (fix (b) of section 8)",
        "f": "len() must return a Python int, which a proxy cannot give "
        "(torch.fx.wrap('len') would record it as a call)",
        "g": "x.shape[1] // 2 is recorded as getattr, getitem and floordiv nodes and the slice uses the result; "
        "no bool or int is ever needed",
    }
    problems = []
    for letter in letters:
        fails = bool(truth[letter])
        if fails and letter not in got:
            problems.append(f"missing {letter}: it fails ({truth[letter]}): {why[letter]}")
        elif not fails and letter in got:
            problems.append(f"not {letter}: symbolic_trace records it: {why[letter]}")
    return problems
