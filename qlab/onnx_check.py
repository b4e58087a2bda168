"""Same integers on another runtime? Export a converted model to ONNX (QDQ form) and compare
ONNX Runtime's integer codes with PyTorch's fake, real and an integer reference, layer by layer.
Used in ``notebooks/09-fake-vs-real-mismatch.ipynb``.

Export: PyTorch 2.x's default (dynamo) exporter cannot trace quantized modules
(their packed weights are opaque to ``torch.export``), and neither exporter knows
``fused_moving_avg_obs_fake_quant``. The TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) does handle the *converted* model: each
quantized op becomes ``DequantizeLinear -> float op -> QuantizeLinear`` with int8
weights, the bias as int32 with scale ``x_s * w_s``, and the exact scales and zero
points of the converted model. ONNX Runtime then either

* runs that graph as written (``optimize=False``): float convolutions between
  Q/DQ nodes -- a fake-quant model with int32 bias, or
* fuses each ``DQ -> Conv -> Q`` into an integer ``QLinearConv`` (``optimize=True``,
  its default): int32 accumulation and float requantization, like fbgemm with
  QNNPACK's int32 bias.

Every ``QuantizeLinear`` output is made a graph output, so each layer's uint8
codes can be read and matched to the PyTorch layer of the same name.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .diagnose import diagnose, int_reference

__all__ = [
    "export_qdq",
    "onnx_op_counts",
    "ort_layer_codes",
    "Agreement",
    "compare_codes",
    "reference_chain",
    "CrossCheck",
    "cross_check",
    "PAIRS",
]


def export_qdq(converted: nn.Module, x: torch.Tensor, *, opset: int = 17) -> bytes:
    """The converted model as ONNX bytes (QDQ form), with the TorchScript exporter."""
    if not isinstance(converted, nn.Module):
        raise TypeError(f"converted must be a torch.nn.Module, got {type(converted).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    buf = io.BytesIO()
    torch.onnx.export(converted, (x,), buf, dynamo=False, opset_version=opset, input_names=["x"])
    return buf.getvalue()


def onnx_op_counts(model: bytes, *, optimized: bool = False) -> dict[str, int]:
    """Op types in the exported graph, or (``optimized=True``) in the graph ONNX Runtime runs."""
    import onnx

    if optimized:
        import os
        import tempfile

        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as d:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = os.path.join(d, "opt.onnx")
            ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            graph = onnx.load(so.optimized_model_filepath).graph
    else:
        graph = onnx.load_from_string(model).graph
    return dict(Counter(n.op_type for n in graph.node if n.op_type != "Constant"))


def _layer_of(node_name: str) -> str:
    """'/features/0/QuantizeLinear' -> 'features.0'."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def ort_layer_codes(model: bytes, x: torch.Tensor, *, optimize: bool = True) -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime (CPU) and return every layer's uint8 codes (its QuantizeLinear output)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load_from_string(model)
    names = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            names[n.output[0]] = _layer_of(n.name) or n.output[0]
    existing = {o.name for o in m.graph.output}
    for out in names:
        if out not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.UINT8, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    vals = sess.run(outs, {sess.get_inputs()[0].name: x.detach().numpy()})
    return {names[o]: v for o, v in zip(outs, vals, strict=False) if o in names}


@dataclass
class Agreement:
    """How two integer outputs agree: equal codes (count, percent) and the largest difference."""

    n: int
    equal: int
    max_lsb: int

    @property
    def pct_equal(self) -> float:
        return 100.0 * self.equal / max(self.n, 1)

    def __str__(self) -> str:
        return f"{self.equal}/{self.n} ({self.pct_equal:.2f} %) equal, max {self.max_lsb} LSB"


def compare_codes(a, b) -> Agreement:
    """Compare two integer code arrays (tensors or numpy) of one shape."""
    ta = torch.as_tensor(np.asarray(a)).to(torch.int64)
    tb = torch.as_tensor(np.asarray(b)).to(torch.int64)
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    d = (ta - tb).abs()
    return Agreement(int(d.numel()), int((d == 0).sum()), int(d.max()) if d.numel() else 0)


PAIRS = (
    ("ort_int", "torch_real"),
    ("ort_int", "ref_int32"),
    ("ort_qdq", "ort_int"),
    ("ref_fbgemm", "torch_real"),
    ("torch_fake", "torch_real"),
    ("torch_fake", "ort_int"),
)


@dataclass
class CrossCheck:
    """Per layer, the codes of each implementation and their pairwise agreement (:data:`PAIRS`)."""

    layers: list[str]
    codes: dict[str, dict[str, torch.Tensor]]
    ops: dict[str, int]

    def agreement(self, a: str, b: str, layer: str | None = None) -> Agreement | None:
        """Agreement of implementations ``a`` and ``b`` on ``layer`` (default: the last layer)."""
        layer = self.layers[-1] if layer is None else layer
        ca, cb = self.codes[layer].get(a), self.codes[layer].get(b)
        if ca is None or cb is None:
            return None
        return compare_codes(ca, cb)

    def rows(self) -> list[dict]:
        out = []
        for layer in self.layers:
            row = {"layer": layer}
            for a, b in PAIRS:
                ag = self.agreement(a, b, layer)
                row[f"{a} vs {b}"] = "-" if ag is None else f"{ag.pct_equal:.2f}% / {ag.max_lsb}"
            out.append(row)
        return out

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows()).set_index("layer")

    def __repr__(self) -> str:
        rows = self.rows()
        cols = list(rows[0]) if rows else ["layer"]
        cells = [[str(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
        fmt = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=False)).rstrip()  # noqa: E731
        head = "equal codes % / max LSB difference, per layer"
        return "\n".join([head, fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def _codes(t: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    return (torch.round(t / scale) + zp).to(torch.int64)


def _same_q(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (
        a is not None
        and b is not None
        and a.shape == b.shape
        and a.qscheme() == b.qscheme() == torch.per_tensor_affine
        and a.q_scale() == b.q_scale()
        and a.q_zero_point() == b.q_zero_point()
        and torch.equal(a.int_repr(), b.int_repr())
    )


def reference_chain(diag, converted: nn.Module, x: torch.Tensor, requant: str = "fbgemm") -> dict[str, torch.Tensor]:
    """Integer reference codes of every layer, chained: each layer gets the reference's own output of
    the layer before it when the converted model feeds it that layer's output (a chain), else the real
    input. Input quantization is :func:`qlab.quantize`; conv/linear are :mod:`qlab.int_conv` with
    ``requant``; other layers (pools, flatten) run PyTorch's quantized op on the reference's tensor."""
    from .primitives import quantize

    mods = dict(converted.named_modules())
    out, prev_real, prev_ref = {}, None, None
    for lr in diag.layers:
        rm, ro = mods[lr.name], lr.real_out
        if ro is None or ro.qscheme() != torch.per_tensor_affine:
            prev_real, prev_ref = ro, None
            continue
        if lr.real_in is None:  # the input quantization
            ref_q = quantize(x.detach(), float(ro.q_scale()), int(ro.q_zero_point()), ro.dtype)
        else:
            xin = lr.real_in
            if prev_ref is not None and _same_q(prev_real, xin):
                xin = torch._make_per_tensor_quantized_tensor(prev_ref, xin.q_scale(), xin.q_zero_point())
            ref = int_reference(rm, xin, requant)
            ref_q = ref if ref is not None else rm(xin).int_repr()
        out[lr.name] = ref_q.to(torch.int64)
        prev_real, prev_ref = ro, ref_q.to(ro.int_repr().dtype)
    return out


def cross_check(
    prepared: nn.Module, converted: nn.Module, x: torch.Tensor, *, model: bytes | None = None
) -> CrossCheck:
    """Export ``converted`` (unless ``model`` bytes are given), run ONNX Runtime with and without its
    integer fusions, and collect per layer the codes of: ``torch_fake`` (the fake-quant model, as codes
    of the real layer's qparams), ``torch_real``, ``ref_fbgemm`` and ``ref_int32`` (:func:`reference_chain`
    with fbgemm's float bias / the int32 bias the exporter writes, truncated toward zero), ``ort_int`` (ONNX
    Runtime's QLinearConv/QGemm
    kernels) and ``ort_qdq`` (the QDQ graph run in float, unfused)."""
    model = export_qdq(converted, x) if model is None else model
    diag = diagnose(prepared, converted, x)
    ort_int = ort_layer_codes(model, x, optimize=True)
    ort_qdq = ort_layer_codes(model, x, optimize=False)
    refs = {m: reference_chain(diag, converted, x, m) for m in ("fbgemm", "int32_bias_trunc")}
    layers, codes = [], {}
    for lr in diag.layers:
        ro = lr.real_out
        if ro is None or ro.qscheme() != torch.per_tensor_affine:
            continue
        s, z = float(ro.q_scale()), int(ro.q_zero_point())
        c = {"torch_real": ro.int_repr().to(torch.int64)}
        if lr.fake_out is not None and lr.fake_out.shape == ro.shape:
            c["torch_fake"] = _codes(lr.fake_out, s, z)
        c["ref_fbgemm"] = refs["fbgemm"].get(lr.name)
        c["ref_int32"] = refs["int32_bias_trunc"].get(lr.name)
        for key, src in (("ort_int", ort_int), ("ort_qdq", ort_qdq)):
            if lr.name in src and tuple(src[lr.name].shape) == tuple(ro.shape):
                c[key] = torch.from_numpy(src[lr.name].astype(np.int64))
        layers.append(lr.name)
        codes[lr.name] = {k: v for k, v in c.items() if v is not None}
    return CrossCheck(layers, codes, onnx_op_counts(model))
