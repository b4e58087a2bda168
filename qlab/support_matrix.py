"""Which operations work on quantized tensors? The answer for *your* PyTorch, generated at run time.
Taught in ``notebooks/08-vit-attention-int8.ipynb``.

The user report behind notebook 08 asks "where can one find a list of supported
operations?". Documentation goes stale; the dispatcher does not. Four sources,
one category each (:func:`support_matrix` returns them all as :class:`Row` s):

1. ``QuantizedCPU kernel`` -- every registered op with a kernel for the
   ``QuantizedCPU`` dispatch key (``torch._C._dispatch_has_kernel_for_dispatch_key``
   over ``torch._C._dispatch_get_all_op_names()``): what eager mode can run on
   ``quint8``/``qint8`` tensors directly.
2. ``works: composite`` / ``works: QuantizedCPU kernel`` / ``fails`` -- a curated
   list of everyday calls (:data:`PROBES`: ``x * 0.125``, ``q @ k.transpose(-2, -1)``,
   softmax, reshape, ...) *run* on real quantized tensors. Many ops have no
   QuantizedCPU kernel of their own but work because their composite
   implementation reaches ops that do (``reshape`` -> ``view``); the detail column
   lists the aten ops a ``TorchDispatchMode`` saw, or the error.
3. ``float inside`` / ``own arithmetic`` -- quantized ops compared with
   ``quantize(op_fp32(dequantize(inputs)))``: bit-for-bit equality means the op
   dequantizes, runs float32 and requantizes (``quantized::matmul`` on x86);
   :func:`time_vs_fp32` adds the timing evidence.
4. ``X86Inductor: default`` / ``X86Inductor: opt-in`` / ``X86Inductor: fp32`` --
   torchao's ``X86InductorQuantizer`` run on a small exported graph containing
   each op (:func:`x86_inductor_annotations`), once with the default recipe and
   once with the opt-ins it offers (``set_function_type_qconfig(torch.matmul, ...)``);
   an op is listed by what the quantizer actually annotated.

:mod:`qlab.support_table` counts, filters, saves and shows the rows (the notebook's searchable table).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import torch

from ._env import scoped
from .timing import speedups, time_interleaved

__all__ = [
    "Row",
    "CATEGORIES",
    "PROBES",
    "quantized_cpu_kernels",
    "has_kernel",
    "probe_ops",
    "float_inside",
    "time_vs_fp32",
    "x86_inductor_annotations",
    "support_matrix",
]

CATEGORIES = (
    "QuantizedCPU kernel",
    "works: QuantizedCPU kernel",
    "works: composite",
    "fails",
    "float inside",
    "own arithmetic",
    "X86Inductor: default",
    "X86Inductor: opt-in",
    "X86Inductor: fp32",
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the matrix: ``op`` (a dispatcher name such as ``aten::bmm`` or the call
    a user writes), its ``category`` (one of :data:`CATEGORIES`) and the evidence."""

    op: str
    category: str
    detail: str = ""


# ----------------------------------------------------------------------------------------------
# 1. The dispatcher


def has_kernel(name: str, key: str = "QuantizedCPU") -> bool:
    """Does the op ``name`` (``"aten::bmm"``, ``"aten::add.Tensor"``) have a kernel for dispatch key ``key``?"""
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(name, key))


def quantized_cpu_kernels() -> list[Row]:
    """Every registered op with a ``QuantizedCPU`` kernel, sorted; the detail says which other
    back ends serve the same op (``CPU``: also float; none: quantized only)."""
    rows = []
    for name in sorted(set(torch._C._dispatch_get_all_op_names())):
        if has_kernel(name, "QuantizedCPU"):
            also = [k for k in ("CPU", "CompositeExplicitAutograd") if has_kernel(name, k)]
            rows.append(Row(name, "QuantizedCPU kernel", "also " + ", ".join(also) if also else "quantized only"))
    return rows


# ----------------------------------------------------------------------------------------------
# 2. Probes: everyday calls on real quantized tensors


class _Inputs:
    """Quantized operands shaped like attention's: ``a`` [2, 3, 5, 8], ``bt`` [2, 3, 8, 5], an image batch."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)

        def q(*shape, dtype=torch.quint8):
            zp = 128 if dtype == torch.quint8 else 0
            return torch.quantize_per_tensor(torch.randn(*shape, generator=g), 0.05, zp, dtype)

        self.a = q(2, 3, 5, 8)
        self.b = q(2, 3, 5, 8)
        self.bt = q(2, 3, 8, 5)
        self.img = q(2, 3, 8, 8)
        self.w = torch.randn(4, 8, generator=g)
        self.ln_w = torch.ones(8)
        self.ln_b = torch.zeros(8)


def _probe_list() -> list[tuple[str, str, Callable[[_Inputs], object]]]:
    F = torch.nn.functional
    return [
        # (the call as a user writes it, the aten op it dispatches to, the call)
        ("x * 0.125 (scale q)", "aten::mul.Tensor", lambda t: t.a * 0.125),
        ("q @ k.transpose(-2, -1)", "aten::matmul", lambda t: t.a @ t.b.transpose(-2, -1)),
        ("torch.matmul(a, b)", "aten::matmul", lambda t: torch.matmul(t.a, t.bt)),
        ("torch.bmm(a, b)", "aten::bmm", lambda t: torch.bmm(t.a.flatten(0, 1), t.bt.flatten(0, 1))),
        (
            "F.scaled_dot_product_attention",
            "aten::scaled_dot_product_attention",
            lambda t: F.scaled_dot_product_attention(t.a, t.b, t.b),
        ),
        ("x.softmax(-1)", "aten::softmax.int", lambda t: t.a.softmax(-1)),
        ("F.linear(x, w)", "aten::linear", lambda t: F.linear(t.a, t.w)),
        ("a + b", "aten::add.Tensor", lambda t: t.a + t.b),
        ("a * b", "aten::mul.Tensor", lambda t: t.a * t.b),
        ("x / 2", "aten::div.Tensor", lambda t: t.a / 2),
        ("F.layer_norm", "aten::layer_norm", lambda t: F.layer_norm(t.a, (8,), t.ln_w, t.ln_b)),
        ("F.gelu", "aten::gelu", lambda t: F.gelu(t.a)),
        ("F.relu", "aten::relu", lambda t: F.relu(t.a)),
        ("torch.sigmoid", "aten::sigmoid", lambda t: torch.sigmoid(t.a)),
        ("torch.tanh", "aten::tanh", lambda t: torch.tanh(t.a)),
        ("torch.exp", "aten::exp", lambda t: torch.exp(t.a)),
        ("x.clamp(-1, 1)", "aten::clamp", lambda t: t.a.clamp(-1, 1)),
        ("x.mean(-1)", "aten::mean.dim", lambda t: t.a.mean(-1)),
        ("x.sum(-1)", "aten::sum.dim_IntList", lambda t: t.a.sum(-1)),
        ("x.reshape(...)", "aten::reshape", lambda t: t.a.reshape(6, 40)),
        ("x.view(...)", "aten::view", lambda t: t.a.view(6, 40)),
        ("x.flatten(1)", "aten::flatten.using_ints", lambda t: t.a.flatten(1)),
        ("x.permute(...)", "aten::permute", lambda t: t.a.permute(1, 0, 3, 2)),
        ("x.transpose(-2, -1)", "aten::transpose.int", lambda t: t.a.transpose(-2, -1)),
        ("x.transpose(...).contiguous()", "aten::contiguous", lambda t: t.a.transpose(-2, -1).contiguous()),
        ("x.unbind(0)", "aten::unbind.int", lambda t: t.a.unbind(0)),
        ("x.chunk(2, -1)", "aten::chunk", lambda t: t.a.chunk(2, -1)),
        ("x[:, 0]", "aten::select.int", lambda t: t.a[:, 0]),
        ("x.expand(...)", "aten::expand", lambda t: t.a[:1].expand(3, -1, -1, -1)),
        ("torch.cat([a, b])", "aten::cat", lambda t: torch.cat([t.a, t.b])),
        ("F.dropout(x, training=False)", "aten::dropout", lambda t: F.dropout(t.a, 0.1, training=False)),
        ("F.max_pool2d", "aten::max_pool2d", lambda t: F.max_pool2d(t.img, 2)),
        ("F.adaptive_avg_pool2d", "aten::adaptive_avg_pool2d", lambda t: F.adaptive_avg_pool2d(t.img, 1)),
        ("F.interpolate(scale_factor=2)", "aten::upsample_nearest2d", lambda t: F.interpolate(t.img, scale_factor=2)),
    ]


#: The curated probes: ``(call, aten op, fn)``; ``fn`` receives quantized operands.
PROBES = _probe_list()


def _trace_ops():
    """A ``TorchDispatchMode`` whose ``.ops`` lists the aten ops a call reaches (below autograd,
    i.e. after composite decompositions), in order, once each."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class TraceOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name + ("" if func._overloadname == "default" else "." + func._overloadname)
            if name not in self.ops:
                self.ops.append(name)
            return func(*args, **(kwargs or {}))

    return TraceOps()


def _first_sentence(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cut = msg.find(". ")
    msg = msg[: cut + 1] if cut > 0 else msg
    return f"{type(exc).__name__}: {msg[:160]}"


def probe_ops(probes=None, seed: int = 0) -> list[Row]:
    """Run each probe on quantized tensors; category ``works: QuantizedCPU kernel`` (the op has
    its own), ``works: composite`` (it does not, but its decomposition runs) or ``fails``."""
    probes = PROBES if probes is None else probes
    t = _Inputs(seed)
    rows = []
    for call, op, fn in probes:
        mode = _trace_ops()
        try:
            with mode:
                out = fn(t)
        except Exception as exc:  # the failure *is* the result
            reached = f" (reached {', '.join(mode.ops)})" if mode.ops else ""
            rows.append(Row(call, "fails", f"{op}{reached} -> {_first_sentence(exc)}"))
            continue
        out = out[0] if isinstance(out, (tuple, list)) else out
        kind = "kernel" if has_kernel(op) else "composite"
        reached = ", ".join(mode.ops) if mode.ops else "no kernel call (identity)"
        cat = "works: QuantizedCPU kernel" if kind == "kernel" else "works: composite"
        rows.append(Row(call, cat, f"{op} -> {reached} -> {out.dtype}"))
    return rows


# ----------------------------------------------------------------------------------------------
# 3. Float inside? Quantized ops against dequantize -> float32 op -> quantize


def _float_inside_cases(seed: int = 0):
    """``(op, quantized call, float reference, output qparams)``: the reference sees dequantized inputs."""
    g = torch.Generator().manual_seed(seed)
    F = torch.nn.functional

    def q(*shape, scale=0.05, zp=128):
        return torch.quantize_per_tensor(torch.randn(*shape, generator=g), scale, zp, torch.quint8)

    # Sizes where float32 rounding shows: an op with its own arithmetic differs in some codes
    # (integer accumulation and float32 summation agree on all but a few per million).
    a, b = q(6, 197, 64), q(6, 64, 197)
    s = q(6, 197, 197, scale=0.1)
    s2 = q(6, 197, 197, scale=0.07, zp=100)
    ln_in = q(16, 197, 384, scale=0.1)
    x, w, bias = q(4096, 1024), torch.randn(1024, 1024, generator=g), torch.randn(1024, generator=g)
    lin = torch.ao.nn.quantized.Linear(1024, 1024)
    lin.set_weight_bias(
        torch.quantize_per_channel(w, w.abs().amax(1) / 127, torch.zeros(1024, dtype=torch.long), 0, torch.qint8), bias
    )
    lin.scale, lin.zero_point = 1.0, 128
    wd = lin.weight().dequantize()
    lnw, lnb = torch.randn(384, generator=g), torch.randn(384, generator=g)
    gelu_s = F.gelu(s)
    sig_s = torch.sigmoid(s)
    return [
        (
            "quantized::matmul",
            lambda: torch.ops.quantized.matmul(a, b, 0.3, 120),
            lambda a_, b_: a_ @ b_,
            (a, b),
            (0.3, 120),
        ),
        (
            "quantized::softmax",
            lambda: torch.ops.quantized.softmax(s, -1, 1 / 256, 0),
            lambda s_: s_.softmax(-1),
            (s,),
            (1 / 256, 0),
        ),
        ("aten::gelu (QuantizedCPU)", lambda: F.gelu(s), F.gelu, (s,), (gelu_s.q_scale(), gelu_s.q_zero_point())),
        (
            "aten::sigmoid (QuantizedCPU)",
            lambda: torch.sigmoid(s),
            torch.sigmoid,
            (s,),
            (sig_s.q_scale(), sig_s.q_zero_point()),
        ),
        ("quantized::add", lambda: torch.ops.quantized.add(s, s2, 0.2, 128), torch.add, (s, s2), (0.2, 128)),
        ("quantized::mul", lambda: torch.ops.quantized.mul(s, s2, 0.2, 128), torch.mul, (s, s2), (0.2, 128)),
        (
            "quantized::layer_norm",
            lambda: torch.ops.quantized.layer_norm(ln_in, [384], lnw, lnb, 1e-5, 0.05, 128),
            lambda s_: F.layer_norm(s_, [384], lnw, lnb, 1e-5),
            (ln_in,),
            (0.05, 128),
        ),
        ("quantized::linear", lambda: lin(x), lambda x_: F.linear(x_, wd, bias), (x,), (1.0, 128)),
    ]


def float_inside(seed: int = 0) -> list[Row]:
    """Compare each quantized op with ``quantize(op(dequantize(...)))`` code for code.

    ``float inside``: identical codes, i.e. the op dequantizes, computes in float32 and
    requantizes. ``own arithmetic``: the op computes its own way (integer accumulation
    for linear, its own normalisation for layer_norm, ...); the detail counts the codes
    that differ."""
    rows = []
    for op, qcall, fcall, inputs, (so, zo) in _float_inside_cases(seed):
        got = qcall().int_repr()
        want = torch.quantize_per_tensor(fcall(*[t.dequantize() for t in inputs]), so, zo, torch.quint8).int_repr()
        diff = (got.int() - want.int()).abs()
        n = int((diff > 0).sum())
        if n == 0:
            rows.append(Row(op, "float inside", f"all {got.numel()} codes equal dequantize -> fp32 -> quantize"))
        else:
            rows.append(
                Row(
                    op,
                    "own arithmetic",
                    f"{n} of {got.numel()} codes differ from dequantize -> fp32 -> quantize (max {int(diff.max())})",
                )
            )
    return rows


def time_vs_fp32(repeats: int = 15, seed: int = 0, shape=(6, 197, 64)) -> dict[str, float]:
    """Median time ratio quantized/fp32 for ``quantized::matmul`` (attention's ``q @ kᵀ`` at
    ViT-S/16 size, ``shape`` = heads, tokens, head_dim) and ``quantized::linear`` (same tokens).

    Timed interleaved (:func:`qlab.timing.time_interleaved`), the ratio paired per round, so a slower
    stretch of a shared machine slows both. A ratio above 1: the int8 op is slower than float32."""
    g = torch.Generator().manual_seed(seed)
    h, n, d = shape
    a = torch.quantize_per_tensor(torch.randn(h, n, d, generator=g), 0.05, 128, torch.quint8)
    b = torch.quantize_per_tensor(torch.randn(h, d, n, generator=g), 0.05, 128, torch.quint8)
    af, bf = a.dequantize(), b.dequantize()
    x = torch.quantize_per_tensor(torch.randn(n, h * d, generator=g), 0.05, 128, torch.quint8)
    xf = x.dequantize()
    w = torch.randn(3 * h * d, h * d, generator=g)
    lin = torch.ao.nn.quantized.Linear(h * d, 3 * h * d)
    lin.set_weight_bias(torch.quantize_per_tensor(w, 0.01, 0, torch.qint8), None)
    fns = {
        "quantized::matmul": lambda: torch.ops.quantized.matmul(a, b, 0.3, 128),
        "matmul": lambda: torch.matmul(af, bf),
        "quantized::linear": lambda: lin(x),
        "linear": lambda: torch.nn.functional.linear(xf, w),
    }
    sp = speedups(time_interleaved(fns, rounds=repeats), "matmul")
    sp_lin = sp["linear"]
    return {"quantized::matmul": 1 / sp["quantized::matmul"], "quantized::linear": sp_lin / sp["quantized::linear"]}


# ----------------------------------------------------------------------------------------------
# 4. What X86InductorQuantizer annotates


class _AllOps(torch.nn.Module):
    """A small graph with one of each op a ViT or a CNN uses, for the quantizer to annotate."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 8)
        self.ln = torch.nn.LayerNorm(8)

    def forward(self, img, x):
        F = torch.nn.functional
        y = self.conv(img)
        y = F.max_pool2d(y, 2)
        y = F.avg_pool2d(y, 2)
        y = F.adaptive_avg_pool2d(y, 1)
        y = torch.flatten(y, 1)
        y = torch.cat([y, y], 0)
        h = self.fc(x)
        h = self.ln(h)
        q = torch.matmul(h, h.transpose(-2, -1))
        s = torch.bmm(q, h)
        s = s * 0.125
        s = torch.mul(s, h)
        s = s + h
        s = F.gelu(s)
        s = F.relu(s)
        s = s.softmax(-1)
        return y, s


def _node_op(node) -> str:
    t = node.target
    name = f"aten::{t._schema.name.split('::')[1]}" + ("" if t._overloadname == "default" else f".{t._overloadname}")
    if name in ("aten::mul.Tensor", "aten::add.Tensor"):
        name += " (scalar)" if any(isinstance(a, (int, float)) for a in node.args) else " (tensor, tensor)"
    return name


def x86_inductor_annotations() -> list[Row]:
    """Export :class:`_AllOps`, annotate it with ``X86InductorQuantizer`` (default recipe, then
    default + ``set_function_type_qconfig(torch.matmul, ...)``) and read each node's
    ``quantization_annotation``: ``default``, ``opt-in`` (annotated only with the opt-in)
    or ``fp32`` (never annotated: it stays float between dequantize and quantize)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    skip = {"aten::transpose.int"}  # a view, not compute
    with scoped(seed=0):
        example = (torch.randn(1, 3, 8, 8), torch.randn(2, 4, 8))
        exported = torch.export.export(_AllOps().eval(), example).module()

    def annotated(opt_in: bool) -> dict[str, bool]:
        gm = copy.deepcopy(exported)
        cfg = xiq.get_default_x86_inductor_quantization_config()
        quantizer = xiq.X86InductorQuantizer().set_global(cfg)
        if opt_in:
            quantizer.set_function_type_qconfig(torch.matmul, cfg)
        quantizer.annotate(gm)
        seen: dict[str, bool] = {}
        for node in gm.graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            ann = node.meta.get("quantization_annotation")
            quantized = bool(ann is not None and (ann.input_qspec_map or ann.output_qspec is not None))
            name = _node_op(node)
            seen[name] = seen.get(name, False) or quantized
        return seen

    default, opt = annotated(False), annotated(True)
    only_opt_in = {op.name() for op in xiq.quantizable_ops - xiq.default_quantizable_ops}
    rows = []
    for name in sorted(set(default) | set(opt)):
        if name in skip and not opt.get(name):
            continue
        if default.get(name):
            rows.append(Row(name, "X86Inductor: default", "annotated by X86InductorQuantizer().set_global(...)"))
        elif opt.get(name):
            how = "set_function_type_qconfig(torch.matmul, config)"
            extra = " (listed in quantizable_ops, not in default_quantizable_ops)" if name in only_opt_in else ""
            rows.append(Row(name, "X86Inductor: opt-in", f"annotated only after {how}{extra}"))
        else:
            rows.append(
                Row(name, "X86Inductor: fp32", "not annotated: runs in float32 between dequantize and quantize")
            )
    return rows


# ----------------------------------------------------------------------------------------------
# The matrix, its file and its table


def support_matrix(
    *, dispatcher: bool = True, probes: bool = True, numerics: bool = True, inductor: bool = True, seed: int = 0
) -> list[Row]:
    """All four sources, in the order of :data:`CATEGORIES` (each part can be switched off)."""
    rows: list[Row] = []
    if dispatcher:
        rows += quantized_cpu_kernels()
    if probes:
        rows += probe_ops(seed=seed)
    if numerics:
        rows += float_inside(seed=seed)
    if inductor:
        rows += x86_inductor_annotations()
    return rows
