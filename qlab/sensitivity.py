"""Which layer hurts, and how many to keep in float (``notebooks/11-accuracy-debugging.ipynb``).

Three tools, from coarse to cheap:

* :func:`numeric_debug` -- torchao's PT2E numeric debugger: loggers after every node of the int8 model and
  of its float reference, run on the same inputs, matched node for node. The reference is a copy of the
  *calibrated prepared* model (BatchNorm already folded into the convolutions, observers only watching):
  against ``exported.module()`` the convolution rows would compare a conv+BN with a bare conv. The SQNR of a
  node is *propagated*: it carries the error of every layer before it::

      SQNR_node = 10 log10( Σ ref² / Σ (ref − int8)² )                                    (5)

* :func:`scan` -- quantize with one layer treated differently, for every layer: ``"skip"`` leaves that
  layer in float (the gain from keeping it), ``"only"`` quantizes that layer alone (the harm it does by
  itself). Each step is a whole export-free PT2E run (prepare, calibrate, convert, evaluate).

* :func:`mixed_precision` -- keep the most harmful layers in float, one more per step, until a measure of
  :mod:`qlab.effnet` meets a budget *at the pessimistic end of its interval* (the idea behind NNCF's
  accuracy-controlled quantization and Intel Neural Compressor's tuning loop), reporting what each step
  costs in size (and, with :func:`time_steps`, in latency).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from . import effnet, pt2e
from ._checks import check_choice, check_int, check_number, check_tensor
from ._env import scoped

__all__ = ["BUDGET_RANGE", "Evaluation", "check_data", "calibrate", "evaluate", "numeric_debug", "scan", "rank",
           "mixed_precision", "meets", "time_steps"]

#: The budgets :func:`mixed_precision` accepts, per measure (open at the low end).
BUDGET_RANGE = {"sqnr_db": (0.0, 80.0), "kl": (0.0, 10.0), "top1": (0.0, 1.0), "top5": (0.0, 1.0)}


@dataclass
class Evaluation:
    """One int8 variant: which layers stayed float, every measure with its interval, bytes, timings."""

    float_layers: list[str]
    summary: dict[str, effnet.Summary]
    bytes: int
    seconds: float
    model: torch.nn.Module | None = field(default=None, repr=False)
    latency_ms: dict | None = None

    def as_dict(self) -> dict:
        """JSON-ready (the model left out)."""
        return {
            "float_layers": list(self.float_layers),
            "measures": {k: {"value": s.value, "low": s.low, "high": s.high} for k, s in self.summary.items()},
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
            **({"latency_ms": self.latency_ms} if self.latency_ms else {}),
        }


def _module_names(exported) -> set[str]:
    names = set()
    for node in exported.graph.nodes:
        for fqn, _ in (node.meta.get("nn_module_stack") or {}).values():
            names.add(fqn)
    return names


def check_data(exported, calibration, inputs: torch.Tensor, ref: torch.Tensor, clusters) -> list[torch.Tensor]:
    """Raise ``TypeError``/``ValueError`` naming the argument unless ``exported`` is an ExportedProgram, the
    ``calibration`` batches and ``inputs`` have the exported input's per-sample shape, and ``ref`` (the float
    logits) and ``clusters`` give one row per input. Returns the calibration batches as a list."""
    if not isinstance(exported, torch.export.ExportedProgram):
        raise TypeError(f"exported must be a torch.export.ExportedProgram, got {type(exported).__name__}")
    spec = [n for n in exported.graph.nodes if n.op == "placeholder" and n.name in
            exported.graph_signature.user_inputs]
    sample = tuple(spec[0].meta["val"].shape[1:]) if spec else None
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch")
    for i, b in enumerate(batches):
        check_tensor(f"calibration[{i}]", b)
        if sample is not None and tuple(b.shape[1:]) != sample:
            raise ValueError(f"calibration[{i}] must be batches of shape (N, {', '.join(map(str, sample))}) like the "
                             f"exported model's input, got {tuple(b.shape)}")
    check_tensor("inputs", inputs)
    if sample is not None and tuple(inputs.shape[1:]) != sample:
        raise ValueError(f"inputs must have shape (N, {', '.join(map(str, sample))}), got {tuple(inputs.shape)}")
    check_tensor("ref", ref)
    if ref.dim() != 2 or len(ref) != len(inputs):
        raise ValueError(f"ref must hold the float logits of the {len(inputs)} inputs (N×C), got {tuple(ref.shape)}")
    if np.asarray(clusters).shape != (len(inputs),):
        raise ValueError(f"clusters must give one photo id per input ({len(inputs)}), got shape "
                         f"{np.asarray(clusters).shape}")
    return batches


def calibrate(exported, calibration, quantizer) -> torch.fx.GraphModule:
    """``prepare_pt2e(exported.module(), quantizer)`` run on the ``calibration`` batches: the observed model
    :func:`numeric_debug` takes (``convert_pt2e`` of it is the int8 model). ``exported`` is not changed."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    if not isinstance(exported, torch.export.ExportedProgram):
        raise TypeError(f"exported must be a torch.export.ExportedProgram, got {type(exported).__name__}")
    batches = [calibration] if isinstance(calibration, torch.Tensor) else list(calibration)
    if not batches:
        raise ValueError("calibration must hold at least one batch")
    for i, b in enumerate(batches):
        check_tensor(f"calibration[{i}]", b)
    with scoped():
        prepared = prepare_pt2e(exported.module(), quantizer)
        with torch.no_grad():
            for b in batches:
                prepared(b)
    return prepared


def evaluate(exported, calibration, inputs, ref, clusters, quantizer, float_layers=(), keep_model=True) -> Evaluation:
    """Quantize ``exported`` with ``quantizer`` (prepare, calibrate, convert: :func:`qlab.pt2e.pt2e_int8`), run
    it on ``inputs`` and measure it against ``ref`` per photo (:func:`qlab.effnet.summarize`)."""
    batches = check_data(exported, calibration, inputs, ref, clusters)
    t0 = time.perf_counter()
    model = pt2e.pt2e_int8(exported, batches, quantizer)
    out = effnet.predict(model, inputs)
    ev = Evaluation(list(float_layers), effnet.summarize(ref, out, clusters), pt2e.graph_bytes(model),
                    time.perf_counter() - t0, model if keep_model else None)
    return ev


def numeric_debug(prepared: torch.fx.GraphModule, inputs: torch.Tensor) -> tuple[list[dict], torch.fx.GraphModule]:
    """torchao's numeric debugger on a *calibrated* prepared model (not changed): converts a copy, logs every
    node of the int8 copy and of the float reference (another copy of ``prepared``) on ``inputs`` (at most 8
    rows: every node's output is kept), and returns ``(rows, converted)``. A row: the graph node, the module it
    came from, its op, and equation (5) in dB."""
    from torchao.quantization.pt2e import (
        compare_results,
        extract_results_from_loggers,
        prepare_for_propagation_comparison,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not isinstance(getattr(prepared, "graph", None), torch.fx.Graph):
        raise TypeError(f"prepared must be the GraphModule prepare_pt2e returned, got {type(prepared).__name__}")
    if not any(n.op == "call_module" and "activation_post_process" in n.target for n in prepared.graph.nodes):
        raise ValueError("prepared must be a prepare_pt2e model with observers (not yet converted)")
    check_tensor("inputs", inputs)
    check_int("len(inputs)", len(inputs), 1, 8)
    with scoped():
        converted = convert_pt2e(copy.deepcopy(prepared))
        reference = copy.deepcopy(prepared)
        for name in [n for n, _ in reference.named_children()]:
            if "activation_post_process" in name:  # observers pass values through: skip their statistics work
                setattr(reference, name, torch.nn.Identity())
        logged = {}
        for name, gm in (("ref", reference), ("int8", converted)):
            lg = prepare_for_propagation_comparison(gm)  # a copy with an OutputLogger after every node
            with torch.no_grad():
                lg(inputs)
            # a batch-dynamic graph also logs its symbolic sizes (ints), which compare_results cannot compare
            logged[name] = {k: v for k, v in extract_results_from_loggers(lg).items()
                            if isinstance(v[2][0], torch.Tensor) and v[2][0].is_floating_point()}
    ops = {n.name: getattr(n.target, "_opname", str(n.target)) for n in prepared.graph.nodes}
    rows = []
    for info, s in compare_results(logged["ref"], logged["int8"]).items():
        r = s.results[0]
        # norms accumulated in float64 without float64 copies of every logged activation (2x less memory traffic)
        signal = torch.linalg.vector_norm(r.ref, dtype=torch.float64)
        noise = torch.linalg.vector_norm(r.ref - r.actual, dtype=torch.float64)
        sqnr = float("inf") if noise == 0 else float(20 * torch.log10(signal / noise))
        rows.append({"node": info.name, "module": s.ref_module_stack, "op": ops.get(s.ref_node_name, "?"),
                     "sqnr_db": sqnr})
    return rows, converted


def scan(exported, calibration, inputs, ref, clusters, layers: Iterable[str], kind: str = "only",
         weights: str = "per_tensor", progress: Callable[[str], None] | None = None) -> list[dict]:
    """For each name in ``layers``: ``kind="skip"`` quantizes everything but that layer, ``kind="only"`` just
    that layer (``weights`` per tensor or per channel). Returns one row per layer: its measures (value and
    interval), the bytes and the seconds the step took. ``progress(name)`` is called before each step."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    check_choice("kind", kind, ["skip", "only"])
    check_choice("weights", weights, list(pt2e.WEIGHTS))
    names = _check_layers("layers", layers, exported)
    rows = []
    for name in names:
        if progress is not None:
            progress(name)
        if kind == "skip":
            q = pt2e.x86_quantizer(weights=weights, float_layers=[name])
        else:
            q = xiq.X86InductorQuantizer().set_module_name_qconfig(name, pt2e.x86_config(weights))
        ev = evaluate(exported, calibration, inputs, ref, clusters, q, [name], keep_model=False)
        rows.append({"layer": name, "kind": kind, "weights": weights} | ev.as_dict())
    return rows


def _check_layers(arg: str, layers, exported) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    known = _module_names(exported)
    for n in names:
        if n not in known:  # set_module_name_qconfig ignores unknown names silently: a typo would quantize it
            raise ValueError(f"{arg} must name modules of the exported model, got {n!r} (e.g. {sorted(known)[:3]})")
    return names


def rank(rows: list[dict], measure: str = "sqnr_db") -> list[str]:
    """Layers of a :func:`scan`, most harmful first: for an ``"only"`` scan the worst measure first, for a
    ``"skip"`` scan the best (keeping that layer in float helps most)."""
    check_choice("measure", measure, list(effnet.MEASURES))
    if not rows or any("kind" not in r for r in rows) or len({r["kind"] for r in rows}) != 1:
        raise ValueError("rows must be the non-empty result of one scan (all 'skip' or all 'only')")
    higher_better = effnet.MEASURES[measure][1] == "higher"
    worst_first = (rows[0]["kind"] == "only") == higher_better  # ascending value first
    return [r["layer"] for r in sorted(rows, key=lambda r: r["measures"][measure]["value"], reverse=not worst_first)]


def mixed_precision(exported, calibration, inputs, ref, clusters, ranking: Iterable[str], budget: float,
                    measure: str = "sqnr_db", weights: str = "per_channel", max_float: int | None = None,
                    progress: Callable[[int], None] | None = None) -> list[Evaluation]:
    """Keep the first k layers of ``ranking`` in float, k = 0, 1, 2, ..., until ``measure`` meets ``budget`` at the
    pessimistic end of its 95% interval (:meth:`qlab.effnet.Summary.worst`), or ``max_float`` layers are float.

    Returns every step (the last one meets the budget unless ``max_float`` stopped it: check
    ``meets(step, budget)``); each holds the layers kept in float, the measures, the bytes of the tensors the
    model computes with, and the converted model (time them with :func:`time_steps`)."""
    check_choice("measure", measure, list(BUDGET_RANGE))
    lo, hi = BUDGET_RANGE[measure]
    check_number("budget", budget, lo, hi, lo_open=True)
    check_choice("weights", weights, list(pt2e.WEIGHTS))
    order = _check_layers("ranking", ranking, exported)
    if len(set(order)) != len(order):
        raise ValueError("ranking must not name a layer twice")
    max_float = len(order) if max_float is None else check_int("max_float", max_float, 0, len(order))
    steps = []
    for k in range(max_float + 1):
        if progress is not None:
            progress(k)
        q = pt2e.x86_quantizer(weights=weights, float_layers=order[:k])
        steps.append(evaluate(exported, calibration, inputs, ref, clusters, q, order[:k]))
        if meets(steps[-1], budget, measure):
            break
    return steps


def meets(step: Evaluation, budget: float, measure: str = "sqnr_db") -> bool:
    """Whether ``step`` meets ``budget`` at the pessimistic end of its interval."""
    worst = step.summary[measure].worst()
    return worst >= budget if effnet.MEASURES[measure][1] == "higher" else worst <= budget


def time_steps(steps: list[Evaluation], example: torch.Tensor, rounds: int = 15, extra: dict | None = None):
    """Compile every step's model with Inductor (:func:`qlab.pt2e.lower`, freezing on), time them interleaved
    with ``extra`` candidates (name -> zero-argument callable, e.g. fp32) by :func:`qlab.timing.time_interleaved`,
    and store each step's median and IQR in ``step.latency_ms``. Returns the Timings."""
    from .timing import time_interleaved

    check_tensor("example", example)
    if not steps or any(s.model is None for s in steps):
        raise ValueError("steps must be mixed_precision's result, with their models")
    fns = dict(extra or {})
    for i, s in enumerate(steps):
        compiled = pt2e.lower(s.model, example)
        fns[f"step {i}"] = lambda c=compiled: c(example)
    t = time_interleaved(fns, rounds=rounds)
    for i, s in enumerate(steps):
        lo, hi = t[f"step {i}"].iqr
        s.latency_ms = {"median": t[f"step {i}"].median, "q25": lo, "q75": hi}
    return t
