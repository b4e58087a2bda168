"""Exercises of ``notebooks/14-*.ipynb`` (shipping the int8 model); reference answers in
``notebooks/solutions/14-*.py``."""

from __future__ import annotations

import torch
from torch import fx, nn

from ..deploy import unused_tensors
from ._core import _call, _describe, exercise

__all__ = []


def _case_14_1() -> fx.GraphModule:
    """A small GraphModule shaped like a converted PT2E model: tensors read by ``get_attr`` nodes (an int8 weight
    and its scale), a submodule the graph calls (its weight and bias are used through it), and leftovers no node
    uses: an fp32 parameter, a stale buffer, and a submodule never called whose name starts with the called one's."""
    root = nn.Module()
    root.register_buffer("w_int8", torch.randint(-128, 128, (4, 4), dtype=torch.int8))
    root.register_buffer("scale", torch.full((4,), 0.01))
    root.proj = nn.Linear(4, 4)
    g = fx.Graph()
    x = g.placeholder("x")
    w = g.call_method("float", (g.get_attr("w_int8"),))
    w = g.call_function(torch.mul, (w, g.get_attr("scale")))
    y = g.call_function(torch.nn.functional.linear, (x, w))
    g.output(g.call_module("proj", (y,)))
    gm = fx.GraphModule(root, g)  # copies only what the graph references
    gm.register_parameter("fp32_weight", nn.Parameter(torch.randn(4, 4)))  # what convert_pt2e leaves behind
    gm.register_buffer("old_scale", torch.ones(4))
    gm.proj_old = nn.Linear(4, 4)  # never called; "proj_old.weight" starts with "proj"
    return gm


@exercise("14.1", "the parameters and buffers a converted model holds that its graph never uses")
def _check_14_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function unused_tensors(gm) -> a list of state_dict names"]
    gm = _case_14_1()
    want = set(unused_tensors(gm))  # qlab.deploy's answer is the oracle: fp32_weight, old_scale, proj_old.*
    got, err = _call(fn, gm)
    if err:
        return [err]
    if isinstance(got, str) or not isinstance(got, (list, tuple, set)) or not all(isinstance(n, str) for n in got):
        return [f"return a list of names (strings, as state_dict() spells them), got {_describe(got)}"]
    got = set(got)
    if got == want:
        return []
    problems = []
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"} & got
    if read:
        problems.append(f"{sorted(read)} is read by a get_attr node: the graph uses it")
    if got & {"proj.weight", "proj.bias"}:
        problems.append("'proj.weight' and 'proj.bias' belong to a submodule the graph calls (call_module 'proj'): "
                        "its forward uses them")
    missing = want - got
    if "old_scale" in missing:
        problems.append("'old_scale' is a buffer no node reads: state_dict() holds buffers as well as parameters "
                        "(named_buffers)")
    if missing & {"proj_old.weight", "proj_old.bias"}:
        problems.append("'proj_old.weight' starts with the called module's name 'proj' but belongs to 'proj_old', "
                        "which no node calls: compare whole name components ('proj.' is a prefix, 'proj' is not)")
    if "fp32_weight" in missing:
        problems.append("'fp32_weight' is a parameter no node reads: it is what convert_pt2e leaves behind")
    unknown = got - want - {"proj.weight", "proj.bias"} - read
    if unknown:
        problems.append(f"{sorted(unknown)}: no such parameter or buffer in this module (use gm.named_parameters() "
                        "and gm.named_buffers())")
    return problems or [f"expected {sorted(want)}, got {sorted(got)}"]
