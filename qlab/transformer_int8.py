"""Every int8 path for a transformers encoder on an x86 CPU, one call each. Taught in
``notebooks/10-real-transformer-int8.ipynb``; ``benchmarks/bench_transformer.py`` times them.

Each function takes a float :class:`qlab.transformer.Embedder` and returns a *new* model with its signature
``(input_ids, attention_mask) -> embedding``; the float model is never changed.

============================  ======================================================================
path                          what runs a Linear ``y = x W^T + b``
============================  ======================================================================
:func:`ao_dynamic`            torch.ao ``quantize_dynamic``: fbgemm ``quantized::linear_dynamic``;
                              x quantized per tensor on every call (uint8, 7 bits: ``reduce_range``)
:func:`torchao_int8`          torchao ``quantize_``: ``"dynamic"`` -- x per token int8, ``_int_mm``,
                              glue ops around it; ``"weight_only"`` -- the int8 weight dequantized,
                              fp32 GEMM; ``"int4_weight_only"`` -- what torchao 0.18 offers for int4
:func:`pt2e_static`           PT2E + ``X86InductorQuantizer``: static uint8 x (calibrated), int8
                              per-channel W; oneDNN ``qlinear_pointwise`` once Inductor lowers it
:func:`bf16_autocast`         no int8: ``torch.autocast(bfloat16)`` (AMX-BF16 / AVX512-BF16 CPUs)
============================  ======================================================================

:func:`compiled` wraps any of them in ``torch.compile`` (Inductor, freezing on, compiled now).

**Why PT2E failed on this model** (:func:`export`, :func:`dead_code`): ``BertModel`` computes its pooler
(Linear -> Tanh on the first token) even when only ``last_hidden_state`` is used. ``torch.export`` keeps
that dead ``tanh``. ``X86InductorQuantizer`` looks for Linear -> Tanh to fuse, and a partition's output
nodes are the nodes used *outside* it: an unused ``tanh`` has none, and ``output_nodes[0]`` raises
``IndexError``. Fix: ``gm.graph.eliminate_dead_code()`` after export (or ``add_pooling_layer=False``).
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from ._checks import check_bool, check_choice, check_tensor
from ._env import scoped
from .transformer import Embedder

__all__ = [
    "TORCHAO_CONFIGS",
    "TORCHAO_INDUCTOR",
    "ao_dynamic",
    "torchao_int8",
    "export",
    "dead_code",
    "ffn_down_names",
    "pt2e_static",
    "bf16_autocast",
    "compiled",
    "linear_names",
    "DeadBranch",
]

#: What torchao's ``recommended_inductor_config_setter`` assigns (its CPU-relevant part), for :func:`compiled`.
TORCHAO_INDUCTOR = {"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": True,
                    "force_fuse_int_mm_with_mul": True}
#: torchao 0.18's configs, by the name notebook 10 uses.
TORCHAO_CONFIGS = {
    "dynamic": "Int8DynamicActivationInt8WeightConfig",
    "weight_only": "Int8WeightOnlyConfig",
    "int4_weight_only": "Int4WeightOnlyConfig",
}


class DeadBranch(nn.Module):
    """The smallest model that fails like ``BertModel`` in ``prepare_pt2e``: a Linear -> Tanh branch whose result
    nobody uses (what ``BertPooler`` is when only ``last_hidden_state`` is read)."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.out, self.fc, self.act = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Tanh()

    def forward(self, x):
        y = self.out(x)
        self.act(self.fc(x))  # computed, never used
        return y


def _check_embedder(model) -> Embedder:
    if not isinstance(model, Embedder):
        raise TypeError(f"model must be a qlab.transformer.Embedder, got {type(model).__name__}")
    return model


def linear_names(model: nn.Module) -> list[str]:
    """The ``nn.Linear`` modules of the encoder (the pooler's, never used, left out)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".pooler." not in f".{n}."]


@torch.no_grad()
def ao_dynamic(model: Embedder, per_channel: bool = False, reduce_range: bool = True) -> Embedder:
    """torch.ao ``quantize_dynamic`` of the encoder's Linears (qint8 weights), a copy.

    ``per_channel=False``: ``default_dynamic_qconfig`` (one weight scale per matrix), ``True``:
    ``per_channel_dynamic_qconfig``. The activations are quantized on every call, per tensor, to uint8 --
    and the module's forward passes ``reduce_range=True`` to ``quantized::linear_dynamic`` whatever the
    qconfig says (``torch/ao/nn/quantized/dynamic/modules/linear.py``, module version 4): 7 bits.
    ``reduce_range=False`` makes each module take its version-3 branch, which calls the op without it (8 bits).
    """
    import torch.ao.quantization as tq

    _check_embedder(model)
    check_bool("per_channel", per_channel)
    check_bool("reduce_range", reduce_range)
    qconfig = tq.per_channel_dynamic_qconfig if per_channel else tq.default_dynamic_qconfig
    names = set(linear_names(model))
    q = tq.quantize_dynamic(copy.deepcopy(model), {n: qconfig for n in names}, dtype=torch.qint8)
    if not reduce_range:
        for m in q.modules():
            if type(m).__name__ == "Linear" and type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"):
                m.version = 3
    return q


def torchao_int8(model: Embedder, kind: str = "dynamic") -> Embedder:
    """torchao ``quantize_(copy, config)`` on the encoder's Linears, ``kind`` one of :data:`TORCHAO_CONFIGS`.
    Raises what torchao raises when the config has no x86 CPU path (the float model stays unchanged).

    torchao's configs default to ``set_inductor_config=True``: ``quantize_`` then *assigns* Inductor's global
    flags :data:`TORCHAO_INDUCTOR` (and leaves them set for every later compile, fp32 included). Here it is
    ``False``; :func:`compiled` takes the flags for the one compile that should have them."""
    import torchao.quantization as tao

    _check_embedder(model)
    check_choice("kind", kind, list(TORCHAO_CONFIGS))
    config = getattr(tao, TORCHAO_CONFIGS[kind])(set_inductor_config=False)
    names = set(linear_names(model))
    q = copy.deepcopy(model)
    tao.quantize_(q, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in names)
    return q


def _example(example) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(example, dict) or set(example) != {"input_ids", "attention_mask"}:
        raise TypeError("example must be the dict qlab.transformer.tokenize returns (input_ids, attention_mask)")
    ids, mask = example["input_ids"], example["attention_mask"]
    check_tensor("example['input_ids']", ids)
    check_tensor("example['attention_mask']", mask)
    if ids.dim() != 2 or ids.shape != mask.shape or ids.shape[0] < 2 or ids.shape[1] < 3:
        raise ValueError(f"example's input_ids and attention_mask must be [B, T] with B >= 2 and T >= 3 (export "
                         f"specialises a dimension of size 1 or 2), got {tuple(ids.shape)}, {tuple(mask.shape)}")
    return ids, mask


def export(model: Embedder, example: dict, dce: bool = True, dynamic: bool = True) -> torch.fx.GraphModule:
    """``torch.export.export(model, (input_ids, attention_mask)).module()``, batch and sequence length symbolic
    (``dynamic``; up to the model's ``max_position_embeddings``), with ``graph.eliminate_dead_code()`` applied
    if ``dce``: that removes the pooler's dead ``tanh`` that makes ``prepare_pt2e`` raise ``IndexError``.
    Export never decomposes ``aten.linear``: the quantizer needs it whole (``run_decompositions()`` first
    gives ``ValueError: ... not an aten linear``)."""
    _check_embedder(model)
    check_bool("dce", dce)
    check_bool("dynamic", dynamic)
    ids, mask = _example(example)
    shapes = None
    if dynamic:
        longest = getattr(getattr(model.bert, "config", None), "max_position_embeddings", 512)
        b, t = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=longest)
        shapes = {"input_ids": {0: b, 1: t}, "attention_mask": {0: b, 1: t}}
    with scoped():  # export runs the model on fake tensors; keep the caller's generators unmoved
        gm = torch.export.export(model.eval(), (ids, mask), dynamic_shapes=shapes).module()
    if dce:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return gm


def dead_code(gm: torch.fx.GraphModule) -> list[str]:
    """The compute nodes of ``gm`` whose result nobody uses (``aten`` ops with no users), as ``"name: op"``;
    export's own shape assertions, which have no result, are left out."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and not n.users and "assert" not in str(n.target):
            out.append(f"{n.name}: {n.target}")
    return out


def ffn_down_names(model: nn.Module) -> list[str]:
    """The FFN down-projections (``encoder.layer.N.output.dense``): the Linears whose GELU input has outliers
    nothing can fold away (:mod:`qlab.smoothquant`)."""
    return [n for n in linear_names(model) if re.search(r"layer\.\d+\.output\.dense$", n)]


def pt2e_static(model: Embedder, calibration: list[dict], quantizer=None, dce: bool = True,
                skip: list[str] | tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """Static int8 with PT2E: :func:`export` (dynamic shapes, dead code removed unless ``dce=False``),
    ``prepare_pt2e`` with ``quantizer`` (default :func:`qlab.pt2e.x86_quantizer`; the modules named in
    ``skip`` stay float: ``set_module_name_qconfig(name, None)``), run the ``calibration`` batches (dicts
    from :func:`qlab.transformer.tokenize`), ``convert_pt2e``. Returns the q/dq GraphModule;
    :func:`compiled` lowers it to oneDNN's int8 kernels."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .pt2e import x86_quantizer

    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise TypeError("calibration must be a non-empty list of tokenized batches (qlab.transformer.tokenize)")
    batches = [_example(b) for b in calibration]
    known = set(linear_names(model))
    for name in skip:
        check_choice("skip", name, sorted(known))
    quantizer = quantizer if quantizer is not None else x86_quantizer()
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    gm = export(model, calibration[0], dce=dce)
    with scoped():
        prepared = prepare_pt2e(gm, quantizer)
        with torch.no_grad():
            for ids, mask in batches:
                prepared(ids, mask)
        return convert_pt2e(prepared)


class _Autocast(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, input_ids, attention_mask):
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(input_ids, attention_mask).float()


def bf16_autocast(model: Embedder) -> nn.Module:
    """The float model run under ``torch.autocast("cpu", torch.bfloat16)``: Linears and matmuls in bfloat16
    (oneDNN; fast where the CPU has AMX-BF16 or AVX512-BF16), the embedding returned as float32."""
    _check_embedder(model)
    return _Autocast(model, torch.bfloat16)


def compiled(model: nn.Module, example: dict, freezing: bool = True, dynamic: bool = True,
             inductor: dict | None = None) -> nn.Module:
    """``torch.compile`` (Inductor) a copy of ``model``, compiled now on ``example`` under ``no_grad`` with
    Inductor's ``freezing`` and any further ``inductor`` flags (e.g. :data:`TORCHAO_INDUCTOR`), all restored
    afterwards (as :func:`qlab.pt2e.lower`). ``dynamic``: symbolic batch and sequence length, one compile for
    every shape. Call the result under ``torch.no_grad()``, and inside ``qlab.scoped(inductor={"freezing":
    True})`` where a new shape may recompile: under ``inference_mode``, or outside the flags, Dynamo
    recompiles without freezing -- into the slow graph, silently."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_bool("freezing", freezing)
    check_bool("dynamic", dynamic)
    if inductor is not None and not isinstance(inductor, dict):
        raise TypeError(f"inductor must be a dict of torch._inductor.config flags, got {type(inductor).__name__}")
    args = _example(example)
    c = torch.compile(copy.deepcopy(model), dynamic=dynamic)
    with scoped(inductor={"freezing": freezing, **(inductor or {})}), torch.no_grad():
        c(*args)
    return c
