"""The PT2E flow in a few calls: ``notebooks/06-pt2e-export-quantization.ipynb`` teaches it
step by step; notebook 07 and ``benchmarks/bench_models.py`` use these helpers.

    exported  = torch.export.export(model, (x,), dynamic_shapes=...)    # ATen graph
    prepared  = prepare_pt2e(exported.module(), X86InductorQuantizer())  # + observers
    prepared(calibration batches)                                       # observe
    converted = convert_pt2e(prepared)                                   # quantize/dequantize ops
    compiled  = torch.compile(converted)  with inductor freezing on      # int8 kernels

torchao is imported inside the functions: importing it is slow and logs a line
(notebook 00 explains it), and ``import qlab`` should do neither.
"""

from __future__ import annotations

import copy
import io
from typing import Iterable

import torch

from ._checks import check_int, check_tensor
from ._env import scoped

__all__ = [
    "export_batch_dynamic",
    "x86_quantizer",
    "pt2e_int8",
    "lower",
    "graph_tensors",
    "graph_bytes",
]


def export_batch_dynamic(model: torch.nn.Module, example: torch.Tensor, max_batch: int = 1024):
    """``torch.export.export(model, (example,))`` with dimension 0 (the batch) symbolic, up to ``max_batch``.

    ``example`` needs at least 2 rows: with 1, export specialises the batch dimension to 1.
    """
    check_tensor("example", example)
    if example.dim() == 0 or example.shape[0] < 2:
        raise ValueError(f"example must have a batch dimension of at least 2, got shape {tuple(example.shape)}")
    check_int("max_batch", max_batch, example.shape[0])
    name = torch.export.export(model, (example,), strict=False).graph_signature.user_inputs[0]
    batch = torch.export.Dim("batch", max=max_batch)
    return torch.export.export(model, (example,), dynamic_shapes={name: {0: batch}})


def x86_quantizer(is_qat: bool = False):
    """torchao's ``X86InductorQuantizer`` with its default config set globally (uint8 activations over
    0..255, int8 per-channel symmetric weights; fake-quantize modules if ``is_qat``)."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    return xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat))


def pt2e_int8(model: torch.nn.Module, calibration: Iterable[torch.Tensor], quantizer=None) -> torch.fx.GraphModule:
    """Post-training quantization with PT2E: export (batch dynamic), ``prepare_pt2e``, run the
    ``calibration`` batches, ``convert_pt2e``. Returns the q/dq GraphModule (not compiled)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batches = list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch")
    for i, b in enumerate(batches):
        check_tensor(f"calibration[{i}]", b)
    example = batches[0] if batches[0].shape[0] >= 2 else torch.cat([batches[0]] * 2)
    with scoped():  # export and prepare draw from torch's generator; the caller's random numbers stay put
        gm = export_batch_dynamic(model, example).module()
        prepared = prepare_pt2e(gm, quantizer if quantizer is not None else x86_quantizer())
        with torch.no_grad():
            for b in batches:
                prepared(b)
        return convert_pt2e(prepared)


def lower(module: torch.nn.Module, example, freezing: bool = True, dynamic: bool = False):
    """``torch.compile`` a private copy of ``module`` and compile it now, on ``example`` (a tensor, or a tuple
    of tensors for a model with several inputs), under ``no_grad`` and with Inductor's ``freezing`` set as
    asked (restored afterwards). ``dynamic=False``: static shapes; ``True``: symbolic shapes (one compile
    serves every batch and sequence length the export allowed; notebook 10).

    A private copy because Dynamo caches compiled code per code object and its guards ignore
    Inductor's config: compiling the same GraphModule twice would silently reuse the first compile.
    Later calls must use the same grad mode (and, with static shapes, the same input shape), or Dynamo
    compiles again -- outside this function's ``freezing``, into the slow unfrozen graph.
    """
    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    for i, a in enumerate(args):
        check_tensor(f"example[{i}]" if len(args) > 1 else "example", a)
    compiled = torch.compile(copy.deepcopy(module), dynamic=bool(dynamic))
    with scoped(inductor={"freezing": bool(freezing)}), torch.no_grad():
        compiled(*args)
    return compiled


def graph_tensors(gm: torch.nn.Module) -> dict:
    """The tensors a module computes with. For a plain module, its ``state_dict``. For a GraphModule,
    only what the graph reads: the attributes of its ``get_attr`` nodes (``convert_pt2e`` keeps the
    int8 weights there) and the state of the submodules it calls (FX's quantized modules). The
    state_dict of a converted PT2E model also still holds the original fp32 weights, unused."""
    graph = getattr(gm, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return gm.state_dict()  # keeps its _metadata, so torch.save sizes match state_dict_bytes
    tensors: dict[str, torch.Tensor] = {}
    for node in graph.nodes:
        if node.op == "get_attr" and node.target not in tensors:
            owner, _, attr = node.target.rpartition(".")
            value = getattr(gm.get_submodule(owner) if owner else gm, attr)
            if not isinstance(value, torch.nn.Module):  # tensors, and FX's packed int8 weights
                tensors[node.target] = value
        elif node.op == "call_module":
            for k, v in gm.get_submodule(node.target).state_dict().items():
                tensors[f"{node.target}.{k}"] = v
    return tensors


def graph_bytes(gm: torch.nn.Module) -> int:
    """Bytes ``torch.save`` writes for :func:`graph_tensors` -- comparable with ``qlab.models.state_dict_bytes``."""
    buf = io.BytesIO()
    torch.save(graph_tensors(gm), buf)
    return buf.getbuffer().nbytes
