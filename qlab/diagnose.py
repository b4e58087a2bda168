"""Layer-by-layer diagnosis of a fake-quant (prepared) model against its converted model.
Used in ``notebooks/09-fake-vs-real-mismatch.ipynb``.

For each quantized layer of the converted model (eager or FX: the layers keep
their names through ``prepare_qat``/``convert``), :func:`diagnose` runs both
models on one input and reports:

* the qparams on each side: input, weight and output (scale, zero point), and
  which differ. On the fake side these are the values the forward *used*
  (``FusedMovingAvgObsFakeQuantize`` rewrites its buffers on every call);
* how many integer weights (and dequantized weight values) differ;
* the output difference in LSBs of the real output scale, end to end (``max_lsb``,
  ``mean_lsb``) and *local* (``local_max_lsb``: the real layer fed the fake
  layer's own input), so a difference made upstream is not blamed on this layer;
* the first diverging layer and the likely cause of each difference.

The fake model is deep-copied and its observers disabled, so the prepared model
is not changed and its qparams are those ``convert`` saw.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.ao.quantization as tq
from torch import nn

from . import int_conv
from .mismatch import fused_kernel_qparams, lsb_stats

__all__ = ["LayerReport", "Diagnosis", "diagnose", "int_reference", "CAUSES"]

CAUSES = {
    "agree": "-",
    "propagated": "propagated from upstream",
    "input_qparams": "input qparams differ",
    "fused_qparams": "fused fake-quant qparams (kernel formula != calculate_qparams)",
    "weight_qparams": "weight qparams differ (fake-quant buffers != observer)",
    "bn_folding": "BatchNorm folding (folded weights quantize differently)",
    "weights": "integer weights differ",
    "output_qparams": "output qparams differ",
    "reduce_range": "reduce_range: fake clamps below the real range",
    "avgpool": "average pooling rounding",
    "saturation": "int16 saturation / accumulation in the kernel",
    "requant": "requantization rounding (float path vs integer kernel)",
}


def _qp(scale, zp) -> tuple:
    s = torch.as_tensor(scale).detach().reshape(-1).to(torch.float32)
    z = torch.as_tensor(zp).detach().reshape(-1).to(torch.int64)
    return tuple(float(v) for v in s), tuple(int(v) for v in z)


def _fmt(qp) -> str:
    if qp is None:
        return "?"
    s, z = qp
    if len(s) == 1:
        return f"{s[0]:.6g}/{z[0]}"
    return f"[{len(s)}ch] {min(s):.3g}..{max(s):.3g}/{','.join(map(str, sorted(set(z))))}"


@dataclass
class LayerReport:
    """One layer: qparams on each side, weight differences, output LSB differences, cause."""

    name: str
    kind: str
    input_fake: tuple | None = None
    input_real: tuple | None = None
    weight_fake: tuple | None = None
    weight_real: tuple | None = None
    output_fake: tuple | None = None
    output_real: tuple | None = None
    weights_differ: int = 0
    weight_values_differ: int = 0
    weights: int = 0
    first_weight_diff: tuple | None = None
    max_lsb: float = 0.0
    mean_lsb: float = 0.0
    local_max_lsb: float | None = None
    cause: str = "-"
    notes: list[str] = field(default_factory=list)
    fake_out: torch.Tensor | None = field(
        default=None, repr=False
    )  # the fake layer's output (float, after its fake quant)
    real_out: torch.Tensor | None = field(default=None, repr=False)  # the converted layer's output (quantized)
    real_in: torch.Tensor | None = field(default=None, repr=False)  # the converted layer's input (quantized)

    @property
    def qparams_differ(self) -> list[str]:
        out = []
        for what in ("input", "weight", "output"):
            f, r = getattr(self, f"{what}_fake"), getattr(self, f"{what}_real")
            if f is not None and r is not None and f != r:
                out.append(what)
        return out

    @property
    def diverges(self) -> bool:
        return self.max_lsb > 0

    def row(self) -> dict:
        return {
            "layer": self.name,
            "kind": self.kind,
            "in fake": _fmt(self.input_fake),
            "in real": _fmt(self.input_real),
            "w fake": _fmt(self.weight_fake),
            "w real": _fmt(self.weight_real),
            "out fake": _fmt(self.output_fake),
            "out real": _fmt(self.output_real),
            "qparams differ": ",".join(self.qparams_differ) or "-",
            "int w differ": f"{self.weights_differ}/{self.weights}" if self.weights else "-",
            "w values differ": f"{self.weight_values_differ}/{self.weights}" if self.weights else "-",
            "max LSB": self.max_lsb,
            "mean LSB": round(self.mean_lsb, 4),
            "local max LSB": self.local_max_lsb,
            "cause": self.cause,
        }


@dataclass
class Diagnosis:
    """The report of :func:`diagnose`: one :class:`LayerReport` per layer, in execution order."""

    layers: list[LayerReport]

    @property
    def first_divergence(self) -> LayerReport | None:
        """The first layer (in execution order) whose output differs by a nonzero amount locally."""
        for lr in self.layers:
            if lr.diverges and (lr.local_max_lsb is None or lr.local_max_lsb > 0):
                return lr
        return next((lr for lr in self.layers if lr.diverges), None)

    def __getitem__(self, name: str) -> LayerReport:
        for lr in self.layers:
            if lr.name == name:
                return lr
        raise KeyError(f"no layer named {name!r}; layers: {[lr.name for lr in self.layers]}")

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([lr.row() for lr in self.layers]).set_index("layer")

    def table(
        self,
        columns=(
            "kind",
            "qparams differ",
            "int w differ",
            "w values differ",
            "max LSB",
            "mean LSB",
            "local max LSB",
            "cause",
        ),
    ) -> str:
        rows = [lr.row() for lr in self.layers]
        cols = ["layer", *columns]
        cells = [[str(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=False)).rstrip()  # noqa: E731
        out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells]
        first = self.first_divergence
        out.append(f"first diverging layer: {first.name} ({first.cause})" if first else "no layer diverges")
        return "\n".join(out)

    def __repr__(self) -> str:
        return self.table()


def _is_quantized(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_quantized


def _is_layer(m: nn.Module) -> bool:
    """A quantized module (whose only children are packed weights) or a leaf; never an Identity."""
    if isinstance(m, nn.Identity):
        return False
    kids = list(m.children())
    return not kids or (
        type(m).__module__.startswith("torch.ao.nn") and all("PackedParams" in type(k).__name__ for k in kids)
    )


def _leaf_modules(model: nn.Module):
    for name, m in model.named_modules():
        if name and _is_layer(m) and "PackedParams" not in type(m).__name__:
            yield name, m


@torch.no_grad()
def diagnose(prepared: nn.Module, converted: nn.Module, x: torch.Tensor) -> Diagnosis:
    """Compare ``prepared`` (fake quant, eager or FX) with ``converted`` on ``x``, layer by layer."""
    if not isinstance(prepared, nn.Module) or not isinstance(converted, nn.Module):
        raise TypeError("prepared and converted must be torch.nn.Module instances")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    fake = copy.deepcopy(prepared).eval()
    fake.apply(tq.disable_observer)
    real = copy.deepcopy(converted).eval()

    # real side: every leaf module whose output is a quantized tensor
    r_in, r_out, order = {}, {}, []

    def r_hook(name):
        def hook(mod, inp, out):
            if _is_quantized(out):
                if name not in r_out:
                    order.append(name)
                r_in[name] = inp[0] if inp and _is_quantized(inp[0]) else None
                r_out[name] = out

        return hook

    handles = [m.register_forward_hook(r_hook(n)) for n, m in _leaf_modules(real)]
    real(x)
    for h in handles:
        h.remove()

    # fake side: the same names, every fake quant's input/output, and weight fake quants
    fmods = dict(fake.named_modules())
    f_in, f_out, fq_calls, wfq = {}, {}, [], {}
    keep = []  # keep tensors alive so id() stays unique

    def f_hook(name):
        def hook(mod, inp, out):
            f_in[name], f_out[name] = inp[0], out
            keep.extend([inp[0], out])

        return hook

    def fq_hook(mod, inp, out):
        fq_calls.append((mod, inp[0], out))
        keep.extend([inp[0], out])

    def w_hook(name):
        def hook(mod, inp, out):
            wfq[name] = (mod, inp[0].detach().clone(), out.detach().clone())

        return hook

    handles = []
    for name in order:
        m = fmods.get(name)
        if m is None:
            continue
        handles.append(m.register_forward_hook(f_hook(name)))
        if isinstance(getattr(m, "weight_fake_quant", None), tq.FakeQuantizeBase):
            handles.append(m.weight_fake_quant.register_forward_hook(w_hook(name)))
    for n, m in fake.named_modules():
        if isinstance(m, tq.FakeQuantizeBase) and not n.endswith("weight_fake_quant"):
            handles.append(m.register_forward_hook(fq_hook))
    fake(x)
    for h in handles:
        h.remove()
    by_in = {id(i): (m, o) for m, i, o in fq_calls}
    by_out = {id(o): m for m, i, o in fq_calls}

    reports = []
    for name in order:
        rm, fm = dict(real.named_modules())[name], fmods.get(name)
        rep = LayerReport(name, type(rm).__name__)
        ro = r_out[name]
        rep.real_out, rep.real_in = ro, r_in.get(name)
        rep.output_real = _qp(ro.q_scale(), ro.q_zero_point()) if ro.qscheme() == torch.per_tensor_affine else None
        if r_in.get(name) is not None and r_in[name].qscheme() == torch.per_tensor_affine:
            rep.input_real = _qp(r_in[name].q_scale(), r_in[name].q_zero_point())
        if fm is None or name not in f_out:
            rep.notes.append("no same-named module in the fake model")
            reports.append(rep)
            continue
        fi, fo = f_in[name], f_out[name]
        # the fake quant after this layer: FX applies it to the layer's output, eager inside the layer's hook
        out_fq = None
        if id(fo) in by_in:
            out_fq, fo = by_in[id(fo)]
        elif id(fo) in by_out:
            out_fq = by_out[id(fo)]
        if out_fq is not None:
            rep.output_fake = _qp(out_fq.scale, out_fq.zero_point)
        in_fq = by_out.get(id(fi)) if isinstance(fi, torch.Tensor) else None
        if in_fq is not None:
            rep.input_fake = _qp(in_fq.scale, in_fq.zero_point)
        elif rep.input_real is not None and not any(isinstance(c, tq.FakeQuantizeBase) for c in fm.children()):
            rep.input_fake = None
        # weights
        if name in wfq and hasattr(rm, "weight"):
            fq, w_in, w_fq = wfq[name]
            rep.weight_fake = _qp(fq.scale, fq.zero_point)
            wq = rm.weight()
            if wq.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                rep.weight_real = _qp(wq.q_per_channel_scales(), wq.q_per_channel_zero_points())
            else:
                rep.weight_real = _qp(wq.q_scale(), wq.q_zero_point())
            shape = [-1] + [1] * (w_fq.dim() - 1)
            s = torch.tensor(rep.weight_fake[0]).reshape(shape if len(rep.weight_fake[0]) > 1 else [1])
            z = torch.tensor(rep.weight_fake[1]).reshape(shape if len(rep.weight_fake[1]) > 1 else [1])
            codes_fake = torch.round(w_fq / s).to(torch.int64) + z
            codes_real = wq.int_repr().to(torch.int64)
            if codes_fake.shape == codes_real.shape:
                neq = codes_fake != codes_real
                rep.weights, rep.weights_differ = codes_real.numel(), int(neq.sum())
                rep.weight_values_differ = int((w_fq != wq.dequantize()).sum())
                if rep.weights_differ:
                    idx = tuple(int(i) for i in neq.nonzero()[0])
                    rep.first_weight_diff = (idx, int(codes_fake[idx]), int(codes_real[idx]))
        # outputs, end to end, in LSBs of the real output scale
        r_scale = float(ro.q_scale()) if ro.qscheme() == torch.per_tensor_affine else 1.0
        fo_f = fo.dequantize() if _is_quantized(fo) else fo
        rep.fake_out = fo_f.detach()
        if fo_f.shape == ro.shape:
            st = lsb_stats(name, fo_f, ro.dequantize(), r_scale)
            rep.max_lsb, rep.mean_lsb = st.max_lsb, st.mean_lsb
            # local: the real layer fed the fake layer's own input
            if rep.input_real is not None and isinstance(fi, torch.Tensor) and not _is_quantized(fi):
                s_in, z_in = rep.input_real[0][0], rep.input_real[1][0]
                xq = torch.quantize_per_tensor(fi.detach(), s_in, z_in, r_in[name].dtype)
                local = rm(xq)
                rep.local_max_lsb = lsb_stats(name, fo_f, local.dequantize(), r_scale).max_lsb
        rep.cause = _cause(rep, fm, rm, out_fq, in_fq, wfq.get(name), r_in.get(name), ro)
        reports.append(rep)
    return Diagnosis(reports)


def _fused_mismatch(fq, qp_fake) -> bool:
    """True if ``fq`` is a fused fake quant whose used qparams are its kernel's formula and not the observer's."""
    if not isinstance(fq, tq.FusedMovingAvgObsFakeQuantize) or qp_fake is None:
        return False
    if _qp(*fq.calculate_qparams()) == qp_fake:
        return False
    if fq.is_per_channel:
        return True
    obs = fq.activation_post_process
    kernel = fused_kernel_qparams(
        float(obs.min_val), float(obs.max_val), obs.quant_min, obs.quant_max, fq.is_symmetric_quant
    )
    return _qp(*kernel) == qp_fake


_DATA_MOVEMENT = (nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.ReLU, nn.Dropout, nn.Unflatten)


def _cause(rep: LayerReport, fm, rm, out_fq, in_fq, w_info, r_in, r_out) -> str:
    """All the causes that apply, most specific first, joined by '; '."""
    local = rep.local_max_lsb
    if rep.max_lsb == 0 and not rep.qparams_differ and not rep.weights_differ:
        return CAUSES["agree"]
    differ, causes = rep.qparams_differ, []
    if "weight" in differ:
        fq = w_info[0] if w_info else None
        causes.append(CAUSES["fused_qparams"] if _fused_mismatch(fq, rep.weight_fake) else CAUSES["weight_qparams"])
    elif rep.weights_differ:
        bn = isinstance(getattr(fm, "bn", None), nn.modules.batchnorm._BatchNorm)
        causes.append(CAUSES["bn_folding"] if bn else CAUSES["weights"])
    if "output" in differ:
        causes.append(CAUSES["fused_qparams"] if _fused_mismatch(out_fq, rep.output_fake) else CAUSES["output_qparams"])
    if "input" in differ and rep.max_lsb > 0 and local != 0:
        causes.append(CAUSES["input_qparams"])
    if out_fq is not None and r_out is not None and rep.max_lsb > 0:
        qmax = int(out_fq.activation_post_process.quant_max)
        if qmax < 255 and r_out.dtype == torch.quint8 and bool((r_out.int_repr() > qmax).any()):
            causes.append(CAUSES["reduce_range"])
    if rep.max_lsb > 0 and isinstance(rm, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)):
        causes.append(CAUSES["avgpool"])
    if rep.max_lsb > 1 and r_in is not None and not causes:
        ref = int_reference(rm, r_in)
        if ref is not None and not torch.equal(ref, r_out.int_repr()):
            causes.append(CAUSES["saturation"])
    if not causes and rep.max_lsb > 0:
        arithmetic = not isinstance(rm, _DATA_MOVEMENT)
        causes.append(CAUSES["requant"] if arithmetic and local != 0 else CAUSES["propagated"])
    return "; ".join(dict.fromkeys(causes)) or CAUSES["agree"]


def int_reference(rm, xq, requant: str = "fbgemm") -> torch.Tensor | None:
    """A quantized conv/linear module recomputed by :mod:`qlab.int_conv` (exact int32 accumulator, then
    ``requant``: fbgemm's float arithmetic by default) on the quantized input ``xq``; None for other modules."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    if not isinstance(rm, (nnq.Conv2d, nnq.Linear)) or xq.dtype != torch.quint8:
        return None
    w, b = rm.weight(), rm.bias()
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        ws, wz = w.q_per_channel_scales().float(), w.q_per_channel_zero_points()
    else:
        ws, wz = w.q_scale(), w.q_zero_point()
    relu = isinstance(rm, (nniq.ConvReLU2d, nniq.LinearReLU))
    if isinstance(rm, nnq.Linear):
        x4, w4 = xq.int_repr().reshape(-1, xq.shape[-1], 1, 1), w.int_repr().reshape(*w.shape, 1, 1)
        y = int_conv.conv2d_int(
            x4, xq.q_scale(), xq.q_zero_point(), w4, ws, rm.scale, rm.zero_point, b, w_zp=wz, relu=relu, requant=requant
        )
        return y.reshape(*xq.shape[:-1], -1)
    return int_conv.conv2d_int(
        xq.int_repr(),
        xq.q_scale(),
        xq.q_zero_point(),
        w.int_repr(),
        ws,
        rm.scale,
        rm.zero_point,
        b,
        w_zp=wz,
        stride=rm.stride,
        padding=rm.padding,
        dilation=rm.dilation,
        groups=rm.groups,
        relu=relu,
        requant=requant,
    )
