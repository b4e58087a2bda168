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

from ._checks import check_bool, check_choice, check_int, check_tensor
from ._env import scoped

__all__ = [
    "export_batch_dynamic",
    "x86_config",
    "x86_quantizer",
    "pt2e_int8",
    "weight_kinds",
    "lower",
    "kernel_counts",
    "graph_tensors",
    "graph_bytes",
]

WEIGHTS = ("per_channel", "per_tensor")


def export_batch_dynamic(model: torch.nn.Module, example: torch.Tensor, max_batch: int = 1024, strict: bool = False):
    """``torch.export.export(model, (example,), strict=strict)`` with dimension 0 (the batch) symbolic, up to
    ``max_batch``.

    ``example`` needs at least 2 rows: with 1, export specialises the batch dimension to 1.
    ``strict=True`` traces with TorchDynamo (slower) and records ``source_fn_stack`` on every node, which the
    quantizers' pattern matchers read first; notebook 11 shows a model whose convolutions only match then.
    """
    check_tensor("example", example)
    check_bool("strict", strict)
    if example.dim() == 0 or example.shape[0] < 2:
        raise ValueError(f"example must have a batch dimension of at least 2, got shape {tuple(example.shape)}")
    check_int("max_batch", max_batch, example.shape[0])
    batch = torch.export.Dim("batch", max=max_batch)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=strict)


def x86_config(weights: str = "per_channel", is_qat: bool = False):
    """``X86InductorQuantizer``'s default ``QuantizationConfig`` (uint8 activations over 0..255 from a
    histogram observer, int8 symmetric weights per output channel), or with ``weights="per_tensor"``
    the same with one weight scale per tensor (``MinMaxObserver``, symmetric, int8 -128..127: scale
    ``max|w| / 127.5``). torchao has no per-tensor weight config for this quantizer: notebook 11 builds one to
    show what per-channel buys on depthwise convolutions. Inductor only lowers per-channel weights to int8
    kernels (its weight-prepack patterns match ``dequantize_per_channel``)."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    check_choice("weights", weights, WEIGHTS)
    check_bool("is_qat", is_qat)
    cfg = xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if weights == "per_channel":
        return cfg
    if is_qat:
        raise ValueError("weights='per_tensor' is a post-training config here: use is_qat=False")
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    w = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                         is_dynamic=False, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return QuantizationConfig(cfg.input_activation, cfg.output_activation, w, None, False)


def x86_quantizer(is_qat: bool = False, weights: str = "per_channel", float_layers: Iterable[str] = ()):
    """torchao's ``X86InductorQuantizer`` with :func:`x86_config` set globally (default: uint8 activations over
    0..255, int8 per-channel symmetric weights; fake-quantize modules if ``is_qat``), and the modules named in
    ``float_layers`` left in float (``set_module_name_qconfig(name, None)``)."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    names = [float_layers] if isinstance(float_layers, str) else list(float_layers)
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n:
            raise TypeError(f"float_layers[{i}] must be a module name (a non-empty str), got {n!r}")
    q = xiq.X86InductorQuantizer().set_global(x86_config(weights, is_qat))
    for n in names:
        q.set_module_name_qconfig(n, None)
    return q


def pt2e_int8(model, calibration: Iterable[torch.Tensor], quantizer=None, strict: bool = False) -> torch.fx.GraphModule:
    """Post-training quantization with PT2E: export (batch dynamic, ``strict`` as asked), ``prepare_pt2e``, run
    the ``calibration`` batches, ``convert_pt2e``. Returns the q/dq GraphModule (not compiled).

    ``model`` may also be a ``torch.export.ExportedProgram``: then it is not exported again, and each call
    prepares a fresh ``model.module()`` (export once, quantize many ways). Neither form changes ``model``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batches = list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch")
    for i, b in enumerate(batches):
        check_tensor(f"calibration[{i}]", b)
    exported = isinstance(model, torch.export.ExportedProgram)
    if not exported and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or an ExportedProgram, got {type(model).__name__}")
    example = batches[0] if batches[0].shape[0] >= 2 else torch.cat([batches[0]] * 2)
    with scoped():  # export and prepare draw from torch's generator; the caller's random numbers stay put
        gm = model.module() if exported else export_batch_dynamic(model, example, strict=strict).module()
        prepared = prepare_pt2e(gm, quantizer if quantizer is not None else x86_quantizer())
        with torch.no_grad():
            for b in batches:
                prepared(b)
        return convert_pt2e(prepared)


_WEIGHT_OPS = ("conv2d", "conv1d", "linear")


def weight_kinds(gm: torch.fx.GraphModule) -> dict[str, str]:
    """For every convolution and linear call in a PT2E graph: the module it came from -> how its weight
    arrives: ``"per_channel"`` / ``"per_tensor"`` (through that dequantize: int8 codes) or ``"float"``.
    Several calls of one module are numbered (``name#2``)."""
    if not isinstance(getattr(gm, "graph", None), torch.fx.Graph):
        raise TypeError(f"gm must be an FX GraphModule (a PT2E model), got {type(gm).__name__}")
    out: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "_opname", "") not in _WEIGHT_OPS:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        name = list(stack.values())[-1][0] if stack else node.name
        w = node.args[1]
        target = getattr(w, "target", None) if isinstance(w, torch.fx.Node) else None
        kind = "float"
        if target is not None and "dequantize_per_channel" in str(target):
            kind = "per_channel"
        elif target is not None and "dequantize_per_tensor" in str(target):
            kind = "per_tensor"
        key, k = name, 2
        while key in out:
            key, k = f"{name}#{k}", k + 1
        out[key] = kind
    return out


def lower(module: torch.nn.Module, example, freezing: bool = True, dynamic: bool = False, code: bool = False):
    """``torch.compile`` a private copy of ``module`` and compile it now, on ``example`` (a tensor, or a tuple
    of tensors for a model with several inputs), under ``no_grad`` and with Inductor's ``freezing`` set as
    asked (restored afterwards). ``dynamic=False``: static shapes; ``True``: symbolic shapes (one compile
    serves every batch and sequence length the export allowed; notebook 10).

    A private copy because Dynamo caches compiled code per code object and its guards ignore
    Inductor's config: compiling the same GraphModule twice would silently reuse the first compile.
    Later calls must use the same grad mode (and, with static shapes, the same input shape), or Dynamo
    compiles again -- outside this function's ``freezing``, into the slow unfrozen graph.
    With ``code=True`` returns ``(compiled, source)``: the Python/C++ Inductor generated (see :func:`kernel_counts`;
    notebook 11).
    """
    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    for k, a in enumerate(args):
        check_tensor(f"example[{k}]" if len(args) > 1 else "example", a)
    check_bool("code", code)
    compiled = torch.compile(copy.deepcopy(module), dynamic=bool(dynamic))
    with scoped(inductor={"freezing": bool(freezing)}), torch.no_grad():
        if not code:
            compiled(*args)
            return compiled
        from torch._inductor.utils import run_and_get_code

        _, sources = run_and_get_code(compiled, *args)
    return compiled, "\n".join(sources)


#: Extern kernels a compiled CNN calls, by what they compute: call sites as Inductor writes them in Python
#: (``torch.compile``) and in C++ (an AOTInductor package's wrapper), followed by ``(``.
KERNELS = {
    "int8 conv (oneDNN)": r"(?:torch\.ops\.onednn\.qconv(?:2d)?_pointwise\.\w+|aoti_torch_cpu__qconv\w*)\(",
    "int8 linear (oneDNN)": r"(?:torch\.ops\.onednn\.qlinear_pointwise\.\w+|aoti_torch_cpu__qlinear\w*)\(",
    "fp32 conv (oneDNN)": r"(?:torch\.ops\.mkldnn\._convolution_pointwise_?\.\w+|"
                          r"aoti_torch_cpu_mkldnn__convolution\w*)\(",
    "fp32 conv (ATen)": r"(?:extern_kernels\.convolution|aoti_torch_cpu_convolution)\(",
    "fp32 linear": r"(?:torch\.ops\.mkl\._mkl_linear\.\w+|torch\.ops\.mkldnn\._linear_pointwise\.\w+|"
                   r"extern_kernels\.(?:addmm|mm)|aoti_torch_cpu_(?:addmm|mm|_mkl_linear)\w*)\(",
}


def kernel_counts(source: str) -> dict[str, int]:
    """How many calls of each :data:`KERNELS` kind Inductor's generated ``source`` makes (code a compile
    wrote, from ``lower(..., code=True)``, or an AOTInductor package's wrapper): int8 or fp32 convolutions?"""
    import re

    if not isinstance(source, str):
        raise TypeError(f"source must be the generated code as a str, got {type(source).__name__}")
    return {k: len(re.findall(rx, source)) for k, rx in KERNELS.items()}


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
