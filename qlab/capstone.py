"""The capstone of ``notebooks/13-capstone.ipynb``: quantize a model you have not seen to int8, within an
accuracy budget, and make it faster than fp32 on this CPU.

:class:`DigitsDSNet` is the held-out model: MobileNet-style inverted residual blocks (1x1 expand, 3x3
depthwise, 1x1 project, batch-norm, hardswish, residual adds) trained on the digits at 32x32 by
``scripts/train_capstone.py`` (checkpoint ``digits_dsnet``). No earlier notebook tuned it.

:func:`assess` runs a learner's ``quantize(model, calibration_batches, example_input) -> callable`` on a
:func:`task` (``"practice"``: notebook 02's digits CNN; ``"heldout"``: the model above) and measures, in one run:

* **accuracy** on the digits test split, batches shaped like ``example_input`` (the last one padded);
  within budget means ``accuracy >= fp32 accuracy - BUDGET``;
* **int8 kernels**: the operators one call runs, read from ``torch.profiler`` (oneDNN's ``qconv``/``qlinear``
  or ``quantized::`` ops count);
* **speed-up** over the fp32 model in eager mode, with :func:`qlab.timing.time_interleaved` and the noise
  rule of equation (1): with ``Q25``/``Q75`` the quartiles of each candidate's per-round times,

      (1)  faster  <=>  speedup > 1  and  Q75(yours) < Q25(fp32)

  i.e. the paired median speed-up exceeds 1 *and* the middle halves of the two timings do not overlap.

When something fails, the report says why: which activation's quantization costs the most accuracy
(:func:`activation_errors`, then accuracy with that one left in float, :func:`float_at`), whether the result
was compiled and whether int8 kernels ran (freezing), whether the caller's model was changed, which
calibration batches were read.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from ._checks import check_choice, check_int
from ._env import scoped

__all__ = ["DigitsDSNet", "TASKS", "BATCH", "BUDGET", "Task", "task", "Report", "assess", "faster", "accuracy",
           "int8_ops", "activation_errors", "float_at"]

#: The two tasks: the checkpoint (``qlab.checkpoints``) and the input size.
TASKS = {"practice": ("digits_cnn", 16), "heldout": ("digits_dsnet", 32)}
BATCH = 64  # the batch the result is called on: large enough for int8 to pay, small enough to time quickly
CALIBRATION_IMAGES = 256  # the first 256 train images, in BATCH-sized batches
BUDGET = 0.01  # accuracy may drop by at most one point (3 of the 364 test digits)


class _InvertedResidual(nn.Module):
    """``x + BN(project(hardswish(BN(depthwise(hardswish(BN(expand(x))))))))``: the output keeps ``x``'s shape."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.Hardswish())
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.project(self.depthwise(self.expand(x)))


class DigitsDSNet(nn.Module):
    """The capstone's held-out CNN for 32x32 digits::

        x -> conv3x3-BN-hardswish (widths[0]) -> [inverted residual] x blocks[0]
          -> conv3x3 stride 2-BN-hardswish (widths[1]) -> [inverted residual] x blocks[1]
          -> conv3x3 stride 2-BN-hardswish (widths[2]) -> [inverted residual] x blocks[2]
          -> global avgpool -> flatten -> fc -> logits

    ``expand``: the inverted residuals' expansion factor. Plain ``nn.Module`` calls only, no stubs: it is
    meant for PT2E (``torch.export``), not eager-mode quantization.
    """

    def __init__(self, num_classes: int = 10, widths: Iterable[int] = (24, 48, 96),
                 blocks: Iterable[int] = (1, 1, 2), expand: int = 2):
        super().__init__()
        w, b = list(widths), list(blocks)
        if len(w) != 3 or not all(isinstance(c, int) and c > 0 for c in w):
            raise ValueError(f"widths must be three positive ints, got {widths!r}")
        if len(b) != 3 or not all(isinstance(n, int) and n >= 0 for n in b):
            raise ValueError(f"blocks must be three ints >= 0, got {blocks!r}")
        check_int("num_classes", num_classes, 2)
        check_int("expand", expand, 1)

        def conv(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.Hardswish())

        layers, cin = [], 1
        for i, (cout, n) in enumerate(zip(w, b, strict=True)):
            layers.append(conv(cin, cout, 1 if i == 0 else 2))
            layers += [_InvertedResidual(cout, expand) for _ in range(n)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w[-1], num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


class _Batches(Sequence):
    """The calibration batches, a read-only sequence remembering which ones were read."""

    def __init__(self, batches: list[torch.Tensor]):
        self._b, self.read = list(batches), set()

    def __len__(self):
        return len(self._b)

    def __getitem__(self, i):
        if isinstance(i, slice):
            idx = range(len(self._b))[i]
            self.read.update(idx)
            return [self._b[j] for j in idx]
        out = self._b[i]
        self.read.add(range(len(self._b))[i])
        return out


@dataclass
class Task:
    """What :func:`assess` hands the learner's function (``model``, ``calibration``, ``example``) and what it
    scores the result on (``test``: the test split in ``BATCH``-row batches, the last padded; ``labels``)."""

    name: str
    checkpoint: str
    model: nn.Module
    calibration: list[torch.Tensor]
    example: torch.Tensor
    test: list[torch.Tensor]
    labels: torch.Tensor


def task(name: str = "practice") -> Task:
    """The ``"practice"`` (notebook 02's digits CNN, 16x16) or ``"heldout"`` task (:class:`DigitsDSNet`, 32x32).
    Calibration: the first ``CALIBRATION_IMAGES`` train digits; example: ``BATCH`` test digits; the
    model is loaded fresh from ``data/`` (eval mode)."""
    from . import checkpoints, data

    check_choice("name", name, list(TASKS))
    ckpt, size = TASKS[name]
    x, y = data.digits("test", size).tensors
    pad = (-len(x)) % BATCH
    padded = torch.cat([x, x[:pad]])
    return Task(name, ckpt, checkpoints.load(ckpt), data.calibration_batches(CALIBRATION_IMAGES, size, BATCH),
                x[:BATCH].clone(), list(torch.split(padded, BATCH)), y)


def int8_ops(ops: Iterable[str]) -> list[str]:
    """The int8 kernels among profiler operator names: oneDNN's ``qconv``/``qlinear`` (PT2E lowered by
    Inductor with freezing) and ``quantized::`` (torch.ao's eager and FX int8 modules)."""
    return [op for op in ops if "qconv" in op or "qlinear" in op or op.startswith("quantized::")]


def _is_quantize(node) -> bool:
    target = str(node.target)
    return node.op == "call_function" and target.startswith("quantized_decomposed.quantize_per_tensor")


def _layer(node) -> str:
    """The module that reads the activation quantized at ``node`` (through its dequantize)."""
    for dq in node.users:
        for user in dq.users:
            stack = user.meta.get("nn_module_stack")
            if stack:
                return list(stack.values())[-1][0].replace("L['self'].", "").replace("L__self__.", "")
            if user.op == "output":
                return "the output"
    return node.name


def _unwrap(result):
    """``(compiled, graph)``: whether ``result`` is a ``torch.compile`` module, and the FX graph inside it."""
    compiled = hasattr(result, "_orig_mod") and hasattr(result, "dynamo_ctx")
    inner = result._orig_mod if compiled else result
    return compiled, inner if isinstance(inner, torch.fx.GraphModule) else None


@torch.no_grad()
def activation_errors(gm: torch.fx.GraphModule, x: torch.Tensor) -> list[dict]:
    """One row per activation quantize node of a converted PT2E graph, worst first: the layer it feeds, its
    scale and zero point, the range they cover, the range the values reach on ``x``, the fraction clipped
    (beyond the range by more than half a step) and the SQNR of quantize-dequantize
    (``qlab.fundamentals.sqnr_db``, ``qlab.primitives.fake_quantize``)."""
    from .fundamentals import sqnr_db
    from .primitives import fake_quantize

    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(f"gm must be a torch.fx.GraphModule (a converted PT2E model), got {type(gm).__name__}")
    seen = {}

    class Capture(torch.fx.Interpreter):
        def run_node(self, n):
            if _is_quantize(n):
                seen[n] = self.fetch_args_kwargs_from_env(n)[0]
            return super().run_node(n)

    Capture(gm).run(x)
    rows = []
    for n, (v, s, z, qmin, qmax, _) in seen.items():
        lo, hi = (qmin - z) * s, (qmax - z) * s
        fq = fake_quantize(v.float(), float(s), int(z), quant_min=int(qmin), quant_max=int(qmax),
                           dtype=torch.quint8 if qmin >= 0 else torch.qint8)
        rows.append({"node": n.name, "layer": _layer(n), "scale": float(s), "zero_point": int(z), "covers": (lo, hi),
                     "reaches": (float(v.min()), float(v.max())),
                     "clipped": float(((v < lo - s / 2) | (v > hi + s / 2)).float().mean()),
                     "sqnr_db": sqnr_db(v.float(), fq)})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def float_at(gm: torch.fx.GraphModule, node_name: str) -> torch.fx.GraphModule:
    """A copy of ``gm`` with one activation's quantize-dequantize removed (that activation stays float)."""
    gm = copy.deepcopy(gm)
    q = next(n for n in gm.graph.nodes if n.name == node_name)
    for dq in list(q.users):
        dq.replace_all_uses_with(q.args[0])
        gm.graph.erase_node(dq)
    gm.graph.erase_node(q)
    gm.recompile()
    return gm


@dataclass
class Report:
    """What :func:`assess` measured, and ``problems``: one specific message per failed requirement."""

    task: str
    fp32_accuracy: float
    accuracy: float | None = None
    speedup: float | None = None
    timings: dict = field(default_factory=dict)  # name -> (median, q25, q75) in ms
    load: tuple = ()
    faster: bool = False
    compiled: bool = False
    ops: list[str] = field(default_factory=list)
    int8: list[str] = field(default_factory=list)
    calibration_read: tuple = ()  # (batches read, batches given)
    problems: list[str] = field(default_factory=list)

    @property
    def within_budget(self) -> bool:
        return self.accuracy is not None and self.accuracy >= self.fp32_accuracy - BUDGET

    @property
    def passed(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"task {self.task!r}: fp32 accuracy {self.fp32_accuracy:.2%}"]
        if self.accuracy is not None:
            out.append(f"  accuracy   {self.accuracy:.2%} ({'within' if self.within_budget else 'outside'} the "
                       f"budget of {BUDGET:.0%} below fp32)")
        if self.ops:
            out.append(f"  int8 ops   {', '.join(sorted(set(self.int8))) or 'none'} (compiled: {self.compiled})")
        if self.ops and self.speedup is None:
            out.append("  speed-up   not timed: no int8 kernel ran")
        if self.speedup is not None:
            (_, f25, f75), (_, y25, y75) = self.timings["fp32"], self.timings["yours"]
            out.append(f"  speed-up   x{self.speedup:.2f} vs fp32 eager: {'faster' if self.faster else 'NOT faster'} "
                       f"by equation (1) (IQR yours [{y25:.1f}, {y75:.1f}] ms, fp32 [{f25:.1f}, {f75:.1f}] ms)")
        out += [f"  problem: {p}" for p in self.problems] or ["  passed"]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def faster(timings, name: str = "yours", baseline: str = "fp32") -> tuple[float, bool]:
    """Equation (1) on :func:`qlab.timing.time_interleaved`'s result: ``(speedup, faster)`` with ``speedup`` the
    paired median of ``baseline_i / name_i`` and ``faster`` true when it exceeds 1 *and* ``name``'s 75th
    percentile lies below ``baseline``'s 25th (the two interquartile ranges do not overlap)."""
    from .timing import speedups

    for arg, v in (("name", name), ("baseline", baseline)):
        check_choice(arg, v, list(timings))
    sp = speedups(timings, baseline)[name]
    return sp, sp > 1 and timings[name].iqr[1] < timings[baseline].iqr[0]


@torch.no_grad()
def _predict(fn, t: Task) -> torch.Tensor:
    return torch.cat([fn(b) for b in t.test])[: len(t.labels)]


def accuracy(fn, t: Task) -> float:
    """Top-1 accuracy of ``fn`` on the task's test split (called on ``BATCH``-row batches, the padding dropped)."""
    return float((_predict(fn, t).argmax(1) == t.labels).float().mean())


def _changes(model: nn.Module, before: dict, types: list) -> str:
    """What changed in ``model`` since ``before`` (its state_dict) and ``types`` (its modules' classes)."""
    now = model.state_dict()
    if list(now) != list(before):
        gone, new = sorted(set(before) - set(now)), sorted(set(now) - set(before))
        return f"tensors removed {gone[:3]}, added {new[:3]}"
    if [type(m) for m in model.modules()] != types:
        return "its modules were replaced"
    diff = [k for k, v in before.items() if type(now[k]) is not type(v) or not torch.equal(now[k], v)]
    return f"{', '.join(diff[:3])}{' ...' if len(diff) > 3 else ''} changed" if diff else ""


def _accuracy_cause(gm, t: Task, calib: _Batches) -> str:
    read = f"your function read {len(calib.read)} of the {len(calib)} calibration batches" if len(
        calib.read) < len(calib) else ""
    if gm is None:
        return ("return the compiled module or the converted GraphModule itself (not a function around it) and the "
                "checker names the layer that costs the most" + (f"; {read}" if read else ""))
    rows = activation_errors(gm, t.example)
    unseen = [r for r in rows if r["scale"] == 1.0 and r["zero_point"] == 0]
    if rows and len(unseen) * 2 >= len(rows):
        return (f"{len(unseen)} of {len(rows)} activations are quantized with scale 1.0 and zero point 0, what an "
                "observer that saw no data gives: run the calibration batches through the prepared model before "
                "convert_pt2e")
    if not rows:
        return "your graph quantizes no activation" + (f"; {read}" if read else "")
    float_acc = {r["node"]: accuracy(float_at(gm, r["node"]), t) for r in rows[:3]}
    worst = max(rows[:3], key=lambda r: float_acc[r["node"]])
    (lo, hi), (a, b) = worst["covers"], worst["reaches"]
    msg = (f"the activation that costs the most is the input of {worst['layer']}: left in float, accuracy is "
           f"{float_acc[worst['node']]:.2%}. Its scale {worst['scale']:.3g} and zero point {worst['zero_point']} "
           f"cover [{lo:.2f}, {hi:.2f}], the test digits reach [{a:.2f}, {b:.2f}] ({worst['clipped']:.1%} clipped, "
           f"SQNR {worst['sqnr_db']:.1f} dB)")
    return msg + (f"; {read}: calibrate on all of them" if read else "")


def _kernel_cause(result, compiled: bool, gm, ops: list[str]) -> str:
    has_q = gm is not None and any(_is_quantize(n) for n in gm.graph.nodes)
    top = ", ".join(ops[:3])
    if compiled and has_q:
        return ("no int8 kernel ran: Inductor compiled your quantize/dequantize graph with freezing off, so the "
                f"weights stayed graph inputs and no int8 pattern matched (top operators: {top}). torch.compile "
                "compiles at the first call: make that call inside "
                "`with qlab.scoped(inductor={'freezing': True}), torch.no_grad():`")
    if has_q:
        return ("no int8 kernel ran: you returned convert_pt2e's quantize/dequantize graph, which, run eagerly, "
                f"simulates int8 in float (top operators: {top}). Lower it: torch.compile with Inductor's freezing on "
                "(notebook 06 section 6)")
    if compiled:
        return f"no int8 kernel ran: you compiled a float model (top operators: {top}); quantize it before compiling"
    if isinstance(result, nn.Module) and gm is None:
        return (f"no int8 kernel ran: your result is a float {type(result).__name__} (top operators: {top}); "
                "quantize it (PT2E: export, prepare_pt2e, calibrate, convert_pt2e) and lower it with Inductor")
    return (f"no int8 kernel ran (top operators: {top}): lower a PT2E-quantized model with torch.compile and "
            "Inductor's freezing on")


def assess(quantize: Callable, name: str = "practice", rounds: int = 15) -> Report:
    """Run ``quantize(model, calibration_batches, example_input)`` on :func:`task` ``name`` and measure its result
    in one run: accuracy, the int8 operators one call runs, the speed-up over the fp32 model (equation 1 of the
    module docstring, ``rounds`` interleaved rounds), and whether the model passed in was changed. A result that
    runs no int8 kernel fails whatever its speed, and is not timed."""
    if not callable(quantize):
        raise TypeError("quantize must be a function quantize(model, calibration_batches, example_input) -> callable, "
                        f"got {type(quantize).__name__}")
    check_int("rounds", rounds, 3)
    check_choice("name", name, list(TASKS))
    with scoped():  # export, prepare and the learner's code draw random numbers: the caller's stay put
        return _assess(quantize, name, rounds)


def _assess(quantize, name: str, rounds: int) -> Report:
    from .exercises._core import _call
    from .timing import time_interleaved
    from .transformer_plots import profile_ops

    t = task(name)
    fp32 = copy.deepcopy(t.model)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    types = [type(m) for m in t.model.modules()]
    rep = Report(name, accuracy(fp32, t))
    calib = _Batches(t.calibration)
    result, err = _call(quantize, t.model, calib, t.example.clone())
    rep.calibration_read = (len(calib.read), len(calib))
    if err:
        rep.problems.append(err)
        return rep
    changed = _changes(t.model, before, types)
    if changed:
        rep.problems.append(f"your function changed the model it was given ({changed}): the caller still needs the "
                            "float model; work on a copy (copy.deepcopy) or on torch.export's graph")
    if not callable(result):
        rep.problems.append(f"return something callable on a batch (a module or a function), got "
                            f"{type(result).__name__}")
        return rep
    out, err = _call(result, t.example.clone())
    if err:
        rep.problems.append(err.replace("your function", "your result"))
        return rep
    want = (BATCH, int(t.labels.max()) + 1)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        rep.problems.append(f"your result must return float logits of shape {want} for a batch of shape "
                            f"{tuple(t.example.shape)}, got {got}")
        return rep
    rep.accuracy = accuracy(result, t)
    rep.compiled, gm = _unwrap(result)
    rep.ops = [r["op"] for r in profile_ops(lambda: result(t.example), runs=1, top=200)]
    rep.int8 = int8_ops(rep.ops)
    if not rep.int8:
        rep.problems.append(_kernel_cause(result, rep.compiled, gm, rep.ops))
    if not rep.within_budget:
        rep.problems.append(f"accuracy {rep.accuracy:.2%} is more than {BUDGET:.0%} below fp32's "
                            f"{rep.fp32_accuracy:.2%}: {_accuracy_cause(gm, t, calib)}")
    if not rep.int8:  # not timed: without int8 kernels the answer fails whatever the clock says
        return rep
    x = t.example
    tm = time_interleaved({"fp32": lambda: fp32(x), "yours": lambda: result(x)}, rounds=rounds)
    rep.speedup, rep.faster = faster(tm)
    rep.timings = {k: (v.median, *v.iqr) for k, v in tm.items()}
    rep.load = tm.load
    if not rep.faster:
        rep.problems.append(f"not faster than fp32 by equation (1): x{rep.speedup:.2f}, and the middle halves of the "
                            "timings overlap or are in the wrong order; the int8 kernels ran, so rerun when the "
                            f"machine is quieter (load average {tm.load[0]:.2f} before timing)")
    return rep
