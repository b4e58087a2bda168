"""Benchmark qlab's int8 kernels against PyTorch on ViT shapes (not part of the test suite).

    .venv/bin/python benchmarks/bench_kernels.py                 # 1 and 2 threads, writes
    benchmarks/results/kernels.json
    .venv/bin/python benchmarks/bench_kernels.py --threads 1 --repeats 5 --quick

Attention (per image: batch = heads, head dim 64, 197 or 785 tokens), both products:
  q·kᵀ  [H, T, 64] x [H, T, 64]ᵀ -> [H, T, T]      attn·v  [H, T, T] x [H, T, 64] -> [H, T, 64]
compared in one run, on the same inputs:
  fp32        torch.bmm on float32 tensors
  q.matmul    torch.ops.quantized.matmul on quantized tensors (dequantize, fp32 matmul, requantize inside)
  deq-bmm-q   dequantize -> torch.bmm -> quantize_per_tensor, spelled out
  int_mm      torch._int_mm (int8 x int8 -> int32, no zero points, no requantization) looped over the batch
  qlab        qlab.kernels.int8_bmm: uint8 q / attn with zero point, int8 k / v, requantized to int8 ("float")
  qlab-fixed  the same with requant="fixed"
Linear (197 tokens): fp32 F.linear, torch.ao.nn.quantized.Linear (x86 engine, per-channel weights,
float bias) and qlab.kernels.int8_linear on the same codes (asserted bit-exact).

Timings depend on the machine and its load (the JSON records the load average before and after);
only ratios measured in one run are meaningful. Reported: median time over repeats (methods interleaved, so a busy
machine slows all alike),
GOP/s (2 ops per multiply-add), speed-up over fp32, and percent of the int8 peak of the path qlab runs:
  peak = 2 * (multiply-adds per second of that path's instruction, measured on registers only:
  12 independent vpdpbusd for avx512_vnni, 4 tdpbusd tiles for amx, 8 vpmaddwd+vpaddd for avx2) * threads.
It is a measured ceiling of this core, not a datasheet figure; MACs/cycle = that rate / the clock.
The clock is measured with a chain of dependent 64-bit multiplies (3 cycles each). Both probes are qlab's
(qlab.roofline, qlab/csrc/probes.cpp: the same ones notebook 12 runs on the learner's CPU), each call ~10 ms
long: shorter bursts under-read the peak on AMD EPYC (30 vs 225 G/s at 20,000 rounds).
When the best path is amx, the AVX-512 VNNI path is timed too ("qlab-vnni"), on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import qlab  # noqa: E402
import qlab.kernels as qk  # noqa: E402
from qlab import _env, roofline  # noqa: E402
from qlab.timing import time_interleaved  # noqa: E402

MODELS = {"ViT-Tiny": (3, 192), "ViT-Small": (6, 384), "ViT-Base": (12, 768)}  # heads, embedding dim
HEAD_DIM = 64


def time_methods(methods: dict, repeats: int) -> dict:
    """``(median, fastest)`` seconds per call of each method, timed interleaved
    (:func:`qlab.timing.time_interleaved`)."""
    t = time_interleaved(methods, rounds=repeats, warmup=1, target_s=0.003, max_number=200)
    return {name: (v.median / 1e3, min(v.samples) / 1e3) for name, v in t.items()}


def attention_cases(tokens_list, models):
    g = torch.Generator().manual_seed(0)
    for model in models:
        heads, _ = MODELS[model]
        for T in tokens_list:
            q = torch.randn(heads, T, HEAD_DIM, generator=g)
            k = torch.randn(heads, T, HEAD_DIM, generator=g)
            v = torch.randn(heads, T, HEAD_DIM, generator=g)
            attn = torch.softmax(torch.randn(heads, T, T, generator=g), dim=-1)
            yield model, T, "q.kT", q, k.transpose(1, 2), True  # B given as a transposed view of k
            yield model, T, "attn.v", attn, v, False


def bench_attention(model, T, name, a_f, b_f, b_is_kT, repeats):
    """One product: a_f @ b_f in every flavour. Returns (macs, {method: seconds})."""
    H, M, K = a_f.shape
    N = b_f.shape[2]
    macs = H * M * N * K
    if name == "q.kT":
        a_scale, a_zp = float(a_f.abs().max()) / 127, 128
    else:  # softmax probabilities in [0, 1]
        a_scale, a_zp = 1 / 255, 0
    b_scale = float(b_f.abs().max()) / 127
    out_f = torch.bmm(a_f, b_f)
    out_scale = float(out_f.abs().max()) / 127
    qa = torch.quantize_per_tensor(a_f, a_scale, a_zp, torch.quint8)
    qb = torch.quantize_per_tensor(b_f.contiguous(), b_scale, 0, torch.qint8)
    qb_u8 = torch.quantize_per_tensor(b_f.contiguous(), b_scale, 128, torch.quint8)  # quantized::matmul: same dtypes
    a_u8 = qa.int_repr()
    b_i8 = qb.int_repr()
    if b_is_kT:
        k_rows = b_i8.transpose(1, 2).contiguous()  # the keys as stored, [H, T, 64]
        b_i8 = k_rows.transpose(1, 2)  # a view, as attention has it
    a_i8 = (a_u8.to(torch.int16) - 128).to(torch.int8)  # for _int_mm (int8 only)
    b_int_mm = [b_i8[h] for h in range(H)]

    def qlab_bmm(requant):
        if b_is_kT:
            return lambda: qk.int8_bmm(
                a_u8,
                k_rows,
                a_scale=a_scale,
                a_zero_point=a_zp,
                b_scale=b_scale,
                out_scale=out_scale,
                out_zero_point=0,
                out_dtype=torch.int8,
                transpose_b=True,
                requant=requant,
            )
        return lambda: qk.int8_bmm(
            a_u8,
            b_i8,
            a_scale=a_scale,
            a_zero_point=a_zp,
            b_scale=b_scale,
            out_scale=out_scale,
            out_zero_point=0,
            out_dtype=torch.int8,
            requant=requant,
        )

    methods = {
        "fp32": lambda: torch.bmm(a_f, b_f),
        "q.matmul": lambda: torch.ops.quantized.matmul(qa, qb_u8, out_scale, 128),
        "deq-bmm-q": lambda: torch.quantize_per_tensor(
            torch.bmm(qa.dequantize(), qb.dequantize()), out_scale, 0, torch.qint8
        ),
        "int_mm": lambda: [torch._int_mm(a_i8[h], b_int_mm[h]) for h in range(H)],
        "qlab": qlab_bmm("float"),
        "qlab-fixed": qlab_bmm("fixed"),
    }
    if qk.isa() == "amx":
        methods["qlab-vnni"] = on_vnni(qlab_bmm("float"))
    return macs, time_methods(methods, repeats)


def on_vnni(fn):
    """fn on the AVX-512 VNNI path (to compare it with AMX in the same run)."""

    def run():
        torch.ops.qlab._set_isa("avx512_vnni")
        try:
            return fn()
        finally:
            torch.ops.qlab._set_isa("auto")

    return run


def linear_cases(models):
    for model in models:
        _, D = MODELS[model]
        for layer, (K, N) in {"qkv": (D, 3 * D), "proj": (D, D), "fc1": (D, 4 * D), "fc2": (4 * D, D)}.items():
            yield model, layer, K, N


def bench_linear(K, N, repeats, M=197):
    import torch.ao.nn.quantized as nnq

    g = torch.Generator().manual_seed(K * 7 + N)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    bias = torch.randn(N, generator=g) * 0.1
    qx = torch.quantize_per_tensor(x, float(x.abs().max()) / 127, 128, torch.quint8)
    scales = (w.abs().amax(1) / 127).double()
    qw = torch.quantize_per_channel(w, scales, torch.zeros(N, dtype=torch.long), 0, torch.qint8)
    out_scale = float(F.linear(x, w, bias).abs().max()) / 127
    lin = nnq.Linear(K, N)
    lin.set_weight_bias(qw, bias)
    lin.scale, lin.zero_point = out_scale, 128
    x_u8, w_i8, ws = qx.int_repr(), qw.int_repr(), qw.q_per_channel_scales().float()

    def ours():
        return qk.int8_linear(
            x_u8, w_i8, ws, bias, x_scale=qx.q_scale(), x_zero_point=128, out_scale=out_scale, out_zero_point=128
        )

    assert torch.equal(ours(), lin(qx).int_repr()), "qlab int8_linear differs from torch.ao.nn.quantized.Linear"
    methods = {"fp32": lambda: F.linear(x, w, bias), "torch.ao": lambda: lin(qx), "qlab": ours}
    if qk.isa() == "amx":
        methods["qlab-vnni"] = on_vnni(ours)
    return M * N * K, time_methods(methods, repeats)


def row(kind, model, shape, threads, method, timing, macs, fp32_timing, peak_gops):
    seconds, fastest = timing
    fp32_s = fp32_timing[0]
    gops = 2 * macs / seconds / 1e9
    int8 = method not in ("fp32", "q.matmul", "deq-bmm-q")
    return {
        "kind": kind,
        "model": model,
        "shape": shape,
        "threads": threads,
        "method": method,
        "ms": round(seconds * 1e3, 4),  # median over the rounds
        "ms_min": round(fastest * 1e3, 4),  # the fastest round: less sensitive to other load
        "gops": round(gops, 1),
        "speedup_vs_fp32": round(fp32_s / seconds, 2),
        "pct_int8_peak": round(100 * gops / peak_gops, 1) if int8 and peak_gops == peak_gops else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--quick", action="store_true", help="ViT-Base, 197 tokens only")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels.json")
    args = p.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
    warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated")
    with _env.scoped(engine="x86"):  # torch.ao's quantized Linear is packed for, and run under, the x86 engine
        return _run(args)


def _run(args) -> int:
    models = ["ViT-Base"] if args.quick else list(MODELS)
    tokens = [197] if args.quick else [197, 785]

    isa = qk.isa()
    ghz = roofline.clock_ghz()
    peaks = {name: roofline.peak_gmacs(name) for name in qk.available_isas() if name in roofline.PROBED_ISAS}
    machine = {
        "cpu": _env.cpu_name(),
        "cpu_int8_isa": _env.isa_summary(),
        "qlab_isa_path": isa,
        "qlab_backend": qk.backend(),
        "qlab_build": torch.ops.qlab._build_info() if qk.backend() == "native" else None,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "quantized_engine": torch.backends.quantized.engine,
        "qlab": qlab.__version__,
        "measured_clock_ghz": round(ghz, 3),
        "logical_cpus": os.cpu_count(),
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
    }
    per_core = {name: {"gmacs_per_s": round(v, 1), "macs_per_cycle": round(v / ghz, 1)} for name, v in peaks.items()}
    assumptions = {
        "peak": "2 ops x measured multiply-adds/s of the path's instruction (registers only) x threads",
        "measured_peak_per_core": per_core,
        "note": "avx512_vnni: vpdpbusd (16 lanes x 4 uint8*int8 products); amx: tdpbusd (16x16x64 per tile); "
        "avx2: vpmaddwd (8 lanes x 2 int16 products)",
    }
    peak_core = peaks.get(isa, float("nan"))
    print(
        f"CPU: {machine['cpu']} | ISA path: {isa} ({', '.join(machine['cpu_int8_isa'])}) | torch {torch.__version__}"
        f" | clock {ghz:.2f} GHz | measured int8 peak per core: "
        + ", ".join(f"{k} {v['gmacs_per_s']:.0f} GMAC/s ({v['macs_per_cycle']:.0f}/cycle)" for k, v in per_core.items())
    )

    results = []
    for threads in args.threads:
        with _env.scoped(threads=threads):
            _run_threads(args, threads, isa, peaks, peak_core, models, tokens, results)

    machine["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    targets = check_targets(results)
    print("\nTargets (1 thread, ViT-Base):")
    for k, v in targets.items():
        print(f"  {k}: {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine, "assumptions": assumptions, "targets": targets, "results": results}, indent=1)
        + "\n"
    )
    print(f"\nsaved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


def _run_threads(args, threads, isa, peaks, peak_core, models, tokens, results) -> None:
    """One thread count: every attention and linear shape, appended to ``results``."""
    peak = 2 * peak_core * threads
    peak_of = {"qlab-vnni": 2 * peaks.get("avx512_vnni", float("nan")) * threads}  # each path against its own
    print(f"\n== {threads} thread(s): int8 peak {peak:.0f} GOP/s ==")
    print(
        f"{'attention':34s} "
        + " ".join(f"{m:>11s}" for m in ("fp32", "q.matmul", "deq-bmm-q", "int_mm", "qlab", "qlab-fixed"))
        + (" qlab-vnni" if isa == "amx" else "")
        + "   qlab GOP/s  %peak  x fp32  x int_mm"
    )
    cases = list(attention_cases(tokens, models))
    for model, T, name, a_f, b_f, is_kT in tqdm(
        cases, desc=f"attention, {threads} thread(s)", unit="shape", leave=False, dynamic_ncols=True
    ):
        macs, t = bench_attention(model, T, name, a_f, b_f, is_kT, args.repeats)
        shape = f"{name} H={a_f.shape[0]} T={T}"
        for m, s in t.items():
            results.append(row("attention", model, shape, threads, m, s, macs, t["fp32"], peak_of.get(m, peak)))
        q = next(r for r in results[::-1] if r["method"] == "qlab")
        tqdm.write(
            f"{model + ' ' + shape:34s} "
            + " ".join(f"{t[m][0] * 1e3:9.3f}ms" for m in t)
            + f"   {q['gops']:9.1f} {q['pct_int8_peak']:6.1f} {q['speedup_vs_fp32']:6.2f}x"
            + f" {t['int_mm'][0] / t['qlab'][0]:6.2f}x"
        )
    print(
        f"\n{'linear (197 tokens)':34s} {'fp32':>11s} {'torch.ao':>11s} {'qlab':>11s}"
        + (" qlab-vnni" if isa == "amx" else "")
        + "   qlab GOP/s  %peak  x fp32  x torch.ao"
    )
    for model, layer, K, N in tqdm(
        list(linear_cases(models)),
        desc=f"linear, {threads} thread(s)",
        unit="shape",
        leave=False,
        dynamic_ncols=True,
    ):
        macs, t = bench_linear(K, N, args.repeats)
        shape = f"{layer} {K}->{N}"
        for m, s in t.items():
            results.append(row("linear", model, shape, threads, m, s, macs, t["fp32"], peak_of.get(m, peak)))
        q = next(r for r in results[::-1] if r["method"] == "qlab")
        tqdm.write(
            f"{model + ' ' + shape:34s} "
            + " ".join(f"{t[m][0] * 1e3:9.3f}ms" for m in t)
            + f"   {q['gops']:9.1f} {q['pct_int8_peak']:6.1f} {q['speedup_vs_fp32']:6.2f}x"
            + f" {t['torch.ao'][0] / t['qlab'][0]:6.2f}x"
        )


def check_targets(results) -> dict:
    """The three targets, from medians ("met" is decided on these) and, for reference, from fastest rounds."""
    if not any(r["threads"] == 1 for r in results):
        return {"note": "targets are defined for 1 thread; run with --threads 1"}

    def times(kind, method, key):
        return {
            r["shape"]: r[key]
            for r in results
            if r["kind"] == kind and r["model"] == "ViT-Base" and r["threads"] == 1 and r["method"] == method
        }

    def ratio(kind, num, den, target):
        out = {}
        for key, label in (("ms", "per shape"), ("ms_min", "per shape, fastest rounds")):
            n, d = times(kind, num, key), times(kind, den, key)
            out[label] = {s: round(n[s] / d[s], 2) for s in d}
        out["met"] = min(out["per shape"].values()) >= target
        return out

    return {
        "bmm speed-up over fp32 torch.bmm (target >= 4)": ratio("attention", "fp32", "qlab", 4),
        "bmm throughput / torch._int_mm (target >= 0.9)": ratio("attention", "int_mm", "qlab", 0.9),
        "linear speed / torch.ao.nn.quantized.Linear (target >= 1)": ratio("linear", "torch.ao", "qlab", 1),
    }


if __name__ == "__main__":
    sys.exit(main())
