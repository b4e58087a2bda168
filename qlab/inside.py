"""Inside an int8 kernel (notebook 12): the instructions, the GELU table, and integer-only GELU / LayerNorm in a model.

(1) vpdpbusd (AVX-512 VNNI, AVX-VNNI; AMX's tdpbusd is the same sum on tiles): in each 32-bit lane i,
        acc_i += a[4i]·b[4i] + a[4i+1]·b[4i+1] + a[4i+2]·b[4i+2] + a[4i+3]·b[4i+3]      a uint8, b int8, int32 sums
(2) vpmaddubsw (AVX2): in each 16-bit lane i,  out_i = sat16(a[2i]·b[2i] + a[2i+1]·b[2i+1]) -- two products of up to
    255·128 do not fit in int16, so the pair saturates; qlab's AVX2 path widens to int16 first and uses vpmaddwd
(3) the GELU table: when GELU's input x = s_x (c − z_x) is an 8-bit code c and its output is requantized,
        table[c] = clamp(round(GELU(s_x (c − z_x)) / s_y) + z_y),   y_codes = table[x_codes]
    is the whole op, exact: 256 entries computed once per tensor scale (per channel: one table per channel)
Integer-only GELU / LayerNorm inside a float model: the input is quantized per tensor (symmetric, ``bits``),
    :func:`qlab.intonly.i_gelu` / :func:`qlab.intonly.i_layernorm` run on the codes, the result is dequantized;
    LayerNorm's affine γ, β stay float (they fold into the next requantization). The scale comes from the largest
    |x| seen while calibrating.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Callable

import torch
from matplotlib.figure import Figure
from torch import nn

from . import intonly
from ._checks import check_int, check_tensor
from .int8_mlp import gelu_table, lookup  # noqa: F401 -- equation (3) lives with the module that runs it

__all__ = [
    "vpdpbusd", "vpmaddubsw", "gelu_table", "lookup", "IntGELU", "IntLayerNorm", "integer_only",
    "load_attention_results", "load_e2e_results", "e2e_table", "load_linear_results", "linear_vs_onednn",
    "onednn_code_diffs", "PATH_RECORDINGS", "paths_table", "linear_peaks", "softmax_code_errors", "lost_probability",
    "draw_peaks", "draw_attention",
]


def _u8_s8(a: torch.Tensor, b: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("a", a)
    check_tensor("b", b)
    if a.dtype != torch.uint8 or b.dtype != torch.int8:
        raise TypeError(f"a must be uint8 and b int8, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape or a.dim() != 1 or a.numel() % group:
        raise ValueError(f"a and b must be 1-D of the same length, a multiple of {group}, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return a.long().view(-1, group), b.long().view(-1, group)


def vpdpbusd(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Equation (1) on ``len(a) // 4`` lanes: ``acc`` int32, ``a`` uint8, ``b`` int8; int32 wraps as the hardware."""
    a4, b4 = _u8_s8(a, b, 4)
    check_tensor("acc", acc)
    if acc.dtype != torch.int32 or acc.shape != (a4.shape[0],):
        raise TypeError(f"acc must be int32 of shape ({a4.shape[0]},), got {acc.dtype} {tuple(acc.shape)}")
    s = acc.long() + (a4 * b4).sum(1)
    return ((s + 2**31) % 2**32 - 2**31).to(torch.int32)


def vpmaddubsw(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Equation (2) on ``len(a) // 2`` lanes: int16 pair sums, saturated."""
    a2, b2 = _u8_s8(a, b, 2)
    return (a2 * b2).sum(1).clamp(-(2**15), 2**15 - 1).to(torch.int16)


class _IntOnly(nn.Module):
    """Quantizes its input per tensor (symmetric, ``bits``) with the largest |x| seen while ``calibrating``."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = check_int("bits", bits, 4, 24)
        self.calibrating = True
        self.register_buffer("absmax", torch.zeros(()))

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        if self.calibrating:
            self.absmax = torch.maximum(self.absmax, x.detach().abs().max())
        qmax = 2 ** (self.bits - 1) - 1
        s = max(float(self.absmax), 1e-12) / qmax
        return torch.round(x / s).clamp(-qmax, qmax).to(torch.int64), s


class IntGELU(_IntOnly):
    """GELU by :func:`qlab.intonly.i_gelu` on ``bits``-bit codes (equation 4 of the module docstring)."""

    def forward(self, x):
        q, s = self.codes(x)
        y, sy = intonly.i_gelu(q, s)
        return (y.double() * sy).to(x.dtype)


class IntLayerNorm(_IntOnly):
    """LayerNorm by :func:`qlab.intonly.i_layernorm` on ``bits``-bit codes, then the float affine."""

    def __init__(self, ln: nn.LayerNorm, bits: int, frac_bits: int = 12):
        super().__init__(bits)
        if not isinstance(ln, nn.LayerNorm) or len(ln.normalized_shape) != 1:
            raise TypeError(f"ln must be an nn.LayerNorm over the last dimension, got {type(ln).__name__}")
        self.frac_bits = frac_bits
        self.weight = None if ln.weight is None else nn.Parameter(ln.weight.detach().clone(), requires_grad=False)
        self.bias = None if ln.bias is None else nn.Parameter(ln.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        q, _ = self.codes(x)
        y = intonly.i_layernorm(q, self.frac_bits).to(x.dtype) * 2.0**-self.frac_bits
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


def _is_gelu(m: nn.Module) -> bool:
    return type(m).__name__ in ("GELU", "GELUActivation") and getattr(m, "approximate", "none") == "none"


@torch.no_grad()
def integer_only(model: nn.Module, calibrate: Callable[[nn.Module], object], gelu: bool = True,
                 layernorm: bool = True, bits: int = 16) -> nn.Module:
    """A copy of ``model`` with every exact GELU replaced by :class:`IntGELU` and every ``nn.LayerNorm`` by
    :class:`IntLayerNorm` (as chosen), their scales set by running ``calibrate(copy)`` once. ``model`` is unchanged."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(calibrate):
        raise TypeError(f"calibrate must be callable (it runs the copy on calibration data), got {calibrate!r}")
    if not (gelu or layernorm):
        raise ValueError("gelu and layernorm must not both be False: nothing to replace")
    m = copy.deepcopy(model).eval()
    names = [(n, mod) for n, mod in m.named_modules() if n and ((gelu and _is_gelu(mod)) or
                                                             (layernorm and isinstance(mod, nn.LayerNorm)))]
    if not names:
        raise TypeError(f"model has no {'GELU' if gelu else ''}{' or ' if gelu and layernorm else ''}"
                        f"{'LayerNorm' if layernorm else ''} module to replace")
    new = []
    for n, mod in names:
        r = IntLayerNorm(mod, bits) if isinstance(mod, nn.LayerNorm) else IntGELU(bits)
        m.set_submodule(n, r)
        new.append(r)
    calibrate(m)
    for r in new:
        r.calibrating = False
    return m


# ----------------------------------------------------------------------------------------------
# Notebook 12's measurements: the recordings, the softmax errors, the figures

ATTENTION_RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "attention.json"


def _load(path, default: pathlib.Path, keys: tuple[str, ...], script: str) -> dict:
    p = pathlib.Path(path) if path is not None else default
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run `python benchmarks/{script}`")
    data = json.loads(p.read_text())
    for key in keys:
        if key not in data:
            raise ValueError(f"{p.name} has no {key!r} section: not a {script} results file")
    return data


def load_attention_results(path=None) -> dict:
    """``benchmarks/results/attention.json`` (``benchmarks/bench_attention.py``): ``meta`` (the machine),
    ``attention`` (``{threads: {tokens: ...}}``) and ``vit_small`` (``{threads: ...}``)."""
    return _load(path, ATTENTION_RESULTS, ("meta", "attention", "vit_small"), "bench_attention.py")


E2E_RESULTS = ATTENTION_RESULTS.with_name("vit-e2e.json")


def load_e2e_results(path=None) -> dict:
    """``benchmarks/results/vit-e2e.json`` (``bench_attention.py --grid``): ``meta`` and ``e2e``
    (``{threads: {model: {batch: {"variants": ...}}}}``)."""
    return _load(path, E2E_RESULTS, ("meta", "e2e"), "bench_attention.py --grid ...")


def e2e_table(results: dict) -> list[dict]:
    """One row per (threads, model, batch) of a ``--grid`` recording: each variant's median ms, and qlab's default
    model's speed over fp32 eager and over PT2E int8 + Inductor (> 1: qlab is faster)."""
    rows = []
    for threads, models in results["e2e"].items():
        for model, batches in models.items():
            for batch, r in batches.items():
                v = r["variants"]
                ms = {n: t["median_ms"] for n, t in v.items()}
                qlab = ms[QLAB_DEFAULT]
                rows.append({"threads": int(threads), "model": model, "batch": int(batch), "ms": ms,
                             "qlab_vs_fp32": ms["fp32 eager"] / qlab,
                             "qlab_vs_pt2e": ms.get(PT2E, float("nan")) / qlab,
                             "qlab_cosine": v[QLAB_DEFAULT]["cosine_to_fp32"]})
    return rows


QLAB_DEFAULT = "qlab quantize_vit eager, softmax=float"
PT2E = "PT2E int8 + Inductor (freezing)"
LINEAR_RESULTS = ATTENTION_RESULTS.with_name("linear.json")
ONEDNN = "oneDNN qlinear_pointwise (prepacked)"


def load_linear_results(path=None) -> dict:
    """``benchmarks/results/linear.json`` (``benchmarks/bench_linear.py``): ``meta`` and ``results``
    (``{threads: {"<name> K->N, M=<tokens>, out <dtype>": {"candidates": ...}}}``)."""
    return _load(path, LINEAR_RESULTS, ("meta", "results"), "bench_linear.py")


def linear_vs_onednn(results: dict, threads: int = 1, tokens: int = 197) -> dict[str, dict[str, float]]:
    """Per linear and output dtype (``"qkv, out uint8"``): each qlab candidate's speed over oneDNN's prepacked
    ``qlinear_pointwise`` (paired per round in the recording; > 1: qlab is faster)."""
    rows = results["results"].get(str(threads))
    if rows is None:
        raise ValueError(f"no results at threads={threads}; recorded: {sorted(results['results'])}")
    out = {}
    for key, r in rows.items():
        name, rest = key.split(" ", 1)
        if f"M={tokens}," not in rest:
            continue
        label = f"{name}, out {rest.rsplit('out ', 1)[1]}"
        out[label] = {n.split(" (")[0]: c["speed_vs_onednn"] for n, c in r["candidates"].items()
                      if n.startswith("qlab")}
    if not out:
        raise ValueError(f"no rows with M={tokens} at threads={threads}")
    return out


def onednn_code_diffs(results: dict, threads: int = 1, tokens: int = 197) -> dict[str, int]:
    """Per linear with a uint8 output (``"qkv"``): the largest difference, in codes, between oneDNN's output and
    qlab's exact one in the recording (1 at most where both compute exactly: the two round the same real number)."""
    rows = results["results"].get(str(threads))
    if rows is None:
        raise ValueError(f"no results at threads={threads}; recorded: {sorted(results['results'])}")
    out = {key.split(" ", 1)[0]: r["max_code_diff"] for key, r in rows.items()
           if f"M={tokens}," in key and key.endswith("out uint8")}
    if not out:
        raise ValueError(f"no uint8 rows with M={tokens} at threads={threads}")
    return out


#: The recording pairs (the ViT/attention benchmark, the linear benchmark, the qlab path both ran), at least one per
#: qlab path, each taken where that path was the best the CPU had or with qlab, ATen and oneDNN held to it (the files'
#: ``meta`` says which). The AVX-512 VNNI path has two: an AMD EPYC whose best it is, and the AMX Xeon held to it
#: (``QLAB_ISA=avx512_vnni ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``).
PATH_RECORDINGS = {
    "avx2": ("attention-avx2.json", "linear-avx2.json", "avx2"),
    "avx_vnni": ("attention-avx-vnni.json", "linear-avx-vnni.json", "avx_vnni"),
    "avx512_vnni": ("attention.json", "linear.json", "avx512_vnni"),
    "avx512_vnni (Xeon)": ("attention-avx512-vnni-xeon.json", "linear-avx512-vnni-xeon.json", "avx512_vnni"),
    "amx": ("attention-amx.json", "linear-amx.json", "amx"),
}


def paths_table(threads: int = 1) -> dict[str, dict]:
    """Per recording pair (:data:`PATH_RECORDINGS`): the qlab path, the machine, oneDNN's int8 ISA, ViT-S/16 batch 1
    in ms (``fp32``, ``pt2e``: PT2E int8 + Inductor, ``qlab``: ``quantize_vit`` eager with its defaults), qlab's
    prepacked linear over oneDNN's on ViT-B's four linears (197 tokens, uint8 out; > 1: qlab is faster) and oneDNN's
    largest output code difference from qlab's exact codes."""
    check_int("threads", threads, 1)
    out = {}
    for label, (att_name, lin_name, path) in PATH_RECORDINGS.items():
        att = load_attention_results(ATTENTION_RESULTS.with_name(att_name))
        lin = load_linear_results(LINEAR_RESULTS.with_name(lin_name))
        for rec in (att, lin):
            if not rec["meta"]["qlab_kernels"].endswith(f"({path})"):
                raise ValueError(f"{att_name} / {lin_name} should be recorded on qlab's {path} path, "
                                 f"got {rec['meta']['qlab_kernels']}")
        v = att["vit_small"][str(threads)]["variants"]
        speed = linear_vs_onednn(lin, threads)
        out[label] = {
            "path": path, "cpu": att["meta"]["cpu"], "onednn": lin["meta"]["int8_units"]["onednn"],
            "fp32": v["fp32 eager"]["median_ms"], "pt2e": v[PT2E]["median_ms"], "qlab": v[QLAB_DEFAULT]["median_ms"],
            "qlab_cosine": v[QLAB_DEFAULT]["cosine_to_fp32"],
            "linear_vs_onednn": {k.split(",")[0]: r["qlab int8_linear_packed"] for k, r in speed.items()
                                 if k.endswith("out uint8")},
            "onednn_code_diff": max(onednn_code_diffs(lin, threads).values()),
        }
    return out


def linear_peaks(results: dict, threads: int = 1) -> dict[str, dict[str, float]]:
    """From ``kernels.json``: per ViT-B linear shape, qlab's G multiply-adds/s and % of the measured peak of the path
    (``"amx"`` for the best path when it is AMX, ``"avx512_vnni"`` for the VNNI-only rerun)."""
    path = results["machine"]["qlab_isa_path"]
    out: dict[str, dict[str, float]] = {}
    for r in results["results"]:
        if r["kind"] == "linear" and r["threads"] == threads and r["model"] == "ViT-Base":
            isa = {"qlab": path, "qlab-vnni": "avx512_vnni"}.get(r["method"])
            if isa:
                out.setdefault(r["shape"], {})[isa] = {"gmacs": r["gops"] / 2, "pct_peak": r["pct_int8_peak"]}
    if not out:
        raise ValueError(f"no ViT-Base linear rows for qlab at threads={threads} in the kernel results")
    return out


def softmax_code_errors(scales, T: int = 197, seed: int = 0) -> dict[float, dict[str, int]]:
    """For logits ``acc · s`` (``acc`` int32 from a real int8 q·kᵀ of random codes, rescaled so the logits span the
    same range for every ``s``): the largest difference, in P codes of 1/255, of the fixed-order float softmax and
    of I-BERT's integer softmax against ``torch.softmax`` quantized. A coarser ``s`` (fewer logit bits) hurts only
    the integer one."""
    from .kernels import attention_reference as A

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, T, T, generator=g) * 2.0  # a spread of 2 nats: peaked enough to matter
    out = {}
    for s in scales:
        acc = torch.round(logits / s).clamp(-(2**31), 2**31 - 1).to(torch.int32)
        x = acc.float() * s
        torch_p = torch.round(torch.softmax(x, dim=-1) * 255).clamp(0, 255).int()
        out[s] = {"float": int((A.softmax_u8(x).int() - torch_p).abs().max()),
                  "int": int((intonly.i_softmax(acc, s).int() - torch_p).abs().max())}
    return out


def lost_probability(T: int, seed: int = 0) -> float:
    """Mean over rows of the probability mass P codes of scale 1/255 do not carry (``1 − Σ codes/255``), for flat
    attention (softmax of N(0, 1) logits) over ``T`` keys: each probability near ``1/T`` rounds to 0 once
    ``T > 510``."""
    from .kernels import attention_reference as A

    x = torch.randn(64, T, generator=torch.Generator().manual_seed(seed))
    return float((1 - A.softmax_u8(x).float().sum(-1) / 255).abs().mean())


def draw_peaks(fig: Figure, results: dict) -> dict:
    """Bars: % of the measured peak that qlab's linear reaches per ViT-B shape, per path. Returns the numbers."""
    table = linear_peaks(results)
    ax = fig.add_subplot(1, 1, 1)
    shapes = list(table)
    paths = sorted({p for v in table.values() for p in v})
    for j, p in enumerate(paths):
        ax.bar([i + 0.4 * j for i in range(len(shapes))], [table[s][p]["pct_peak"] for s in shapes], width=0.4,
               label=p)
    ax.set_xticks([i + 0.2 for i in range(len(shapes))], shapes, fontsize=7)
    ax.set_ylabel("% of measured peak")
    ax.set_title(f"qlab int8_linear, 197 tokens, 1 thread: {results['machine']['cpu']}", fontsize=9)
    ax.legend(fontsize=7)
    return table


def draw_attention(fig: Figure, rec: dict, threads: str = "1") -> dict:
    """Bars: speed over fp32 SDPA of each int8 attention, per sequence length. Returns the numbers."""
    table = {T: {n: c["speedup_vs_sdpa"] for n, c in v["candidates"].items()}
             for T, v in rec["attention"][threads].items()}
    ax = fig.add_subplot(1, 1, 1)
    names = [n for n in next(iter(table.values())) if n != "fp32 SDPA"]
    for j, n in enumerate(names):
        ax.bar([i + 0.25 * j for i in range(len(table))], [table[T][n] for T in table], width=0.25, label=n)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.25 for i in range(len(table))], [f"{T} tokens" for T in table])
    ax.set_ylabel("speed / fp32 SDPA")
    ax.set_title(f"one attention, 12 heads of 64, {threads} thread(s): {rec['meta']['cpu']}", fontsize=9)
    ax.legend(fontsize=7)
    return table


#: Published figures notebook 12 cites (not measured here): (claim, value, source).
PUBLISHED = [
    ("I-ViT, integer-only DeiT-S after QAT, ImageNet top-1 (fp32 79.85)", 80.12,
     "Li & Gu, I-ViT: Integer-only Quantization for Efficient Vision Transformer Inference, ICCV 2023"),
    ("FQ-ViT, fully quantized DeiT-S after PTQ: top-1 points lost", 0.7,
     "Lin et al., FQ-ViT: Post-Training Quantization for Fully Quantized Vision Transformer, IJCAI 2022"),
    ("naive MinMax fully quantized ViT-B, ImageNet top-1 (%)", 23.6, "the FQ-ViT paper's MinMax baseline"),
]
