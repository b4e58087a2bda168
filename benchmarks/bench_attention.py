#!/usr/bin/env python
"""The fused int8 attention of notebook 12, measured: the op against fp32 SDPA and qlab's unfused path, and the
all-int8 ViT-S/16 with it against PT2E + Inductor.

    .venv/bin/python benchmarks/bench_attention.py               # writes benchmarks/results/attention.json
    .venv/bin/python benchmarks/bench_attention.py --smoke       # 3 rounds, 1 thread, no compile -> /tmp

(a) One attention, ViT-B heads (12 heads of 64), batch 1, 197 and 785 tokens, at 1 and 2 threads, every candidate
    timed in the same run by ``qlab.timing.time_interleaved`` (medians, interquartile ranges, speedups over fp32
    SDPA paired per round):
      fp32 SDPA            ``torch.nn.functional.scaled_dot_product_attention`` on float32 q, k, v
      qlab unfused         ``int8_bmm`` -> float32 scores -> ``torch.softmax`` -> quantize -> ``int8_bmm`` (notebook 08)
      qlab fused float     ``int8_attention(softmax="float")``: the fixed-order float softmax, a block of rows at a time
      qlab fused int       ``int8_attention(softmax="int")``: I-BERT's integer softmax
      qlab int8 products   the two ``int8_bmm`` calls alone (q·kᵀ to float32, P·v), P precomputed: the fused op's
                           time minus this is roughly its softmax
    Inputs: seeded normal q, k, v (q scaled by 64^-1/2), quantized per tensor by min/max (q uint8, k and v int8); the
    int8 paths output float32 so their error against SDPA is measured: cosine and max abs error, and how many P codes
    the fused softmax changes against ``torch.softmax`` quantized.
(b) End to end: timm ``vit_small_patch16_224`` (random weights, no download), batch 1, 1 and 2 threads: fp32 eager,
    fp32 + Inductor, bf16 autocast (where the CPU has bf16 dot products), PT2E int8 + Inductor (freezing), and qlab's
    ``quantize_vit`` in eager mode with each softmax
    ("torch": unfused, "float" and "int": fused), the GELU as a table in fc1's epilogue (the default) and, once, in
    float32 between two quantizations (``gelu="float"``), P's codes of a calibrated scale (the default) and, once, of
    1/255 (``prob_scale="fixed"``); every qlab weight prepacked; cosine of the logits to fp32;
    the share of operator time in the fused qlab model (torch.profiler, self CPU time); and once with timm's own
    skip-connection adds (``fuse_residual=False``).
(c) ``--grid MODEL:BATCH ...`` (e.g. ``vit_base_patch16_224:1 vit_small_patch16_224:16 vit_base_patch16_224:16``):
    only end to end, fp32 eager, bf16 autocast, fp32 + Inductor, PT2E int8 + Inductor and qlab's default
    ``quantize_vit``, at each thread count -> ``benchmarks/results/vit-e2e.json``.

It refuses to record on a busy machine (1-minute load average above 0.5; waits ``--wait`` seconds), and records the
load before and after, the CPU, its ISA, the int8 units each library may use and the versions.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qlab  # noqa: E402
import qlab.kernels as qk  # noqa: E402
from qlab import _env, pt2e, vit  # noqa: E402
from qlab.attention import PROB_SCALE  # noqa: E402
from qlab.timing import loadavg, speedups, time_interleaved, wait_for_quiet, write_recording  # noqa: E402

for msg in (".*torch.ao.quantization.*deprecated", "Please use quant_min and quant_max"):
    warnings.filterwarnings("ignore", message=msg)

HEADS, HEAD_DIM = 12, 64
SDPA = "fp32 SDPA"


def _qparams(x: torch.Tensor, signed: bool) -> tuple[float, int]:
    if signed:
        return float(x.abs().max()) / 127.5, 0
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s = (hi - lo) / 255
    return s, int(round(-lo / s))


def attention_inputs(T: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    qf, kf, vf = (torch.randn(1, HEADS, T, HEAD_DIM, generator=g) for _ in range(3))
    qf = qf * HEAD_DIM**-0.5
    (sq, zq), (sk, zk), (sv, zv) = _qparams(qf, False), _qparams(kf, True), _qparams(vf, True)
    q = qk.quantize_per_tensor(qf, sq, zq, torch.uint8)
    k = qk.quantize_per_tensor(kf, sk, zk, torch.int8)
    v = qk.quantize_per_tensor(vf, sv, zv, torch.int8)
    return {"float": (qf, kf, vf), "codes": (q, k, v), "qparams": (sq, zq, sk, zk, sv, zv)}


def attention_candidates(inp: dict) -> dict:
    ops = torch.ops.qlab
    qf, kf, vf = inp["float"]
    q, k, v = inp["codes"]
    sq, zq, sk, zk, sv, zv = inp["qparams"]

    def unfused():
        logits = ops.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, "float")
        p = ops.quantize_per_tensor(logits.softmax(dim=-1), PROB_SCALE, 0, torch.uint8)
        return ops.int8_bmm(p, v, PROB_SCALE, 0, sv, zv, 1.0, 0, torch.float32, False, "float")

    def fused(softmax):
        return lambda: ops.int8_attention(q, k, v, sq, zq, sk, zk, sv, zv, None, 1.0, 0, torch.float32, softmax,
                                          "float")

    p_codes = ops.quantize_per_tensor(ops.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, "float")
                                      .softmax(dim=-1), PROB_SCALE, 0, torch.uint8)

    def products_only():  # the two int8 products the fused op runs, without the softmax between them
        ops.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, "float")
        return ops.int8_bmm(p_codes, v, PROB_SCALE, 0, sv, zv, 1.0, 0, torch.float32, False, "float")

    return {SDPA: lambda: F.scaled_dot_product_attention(qf, kf, vf, scale=1.0), "qlab unfused": unfused,
            "qlab fused float": fused("float"), "qlab fused int": fused("int"),
            "qlab int8 products only": products_only}


def attention_errors(inp: dict, fns: dict) -> dict:
    from qlab.kernels import attention_reference as A
    from qlab.kernels import reference as R

    with torch.no_grad():
        ref = fns[SDPA]()
        out = {}
        for name, f in fns.items():
            if name == "qlab int8 products only":
                continue
            y = f()
            out[name] = {"cosine_to_sdpa": round(float(F.cosine_similarity(y.flatten(), ref.flatten(), dim=0)), 6),
                         "max_abs_err": round(float((y - ref).abs().max()), 5)}
        q, k, _ = inp["codes"]
        sq, zq, sk, zk, _, _ = inp["qparams"]
        logits = R.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.float32, True, "float")
        torch_p = qk.quantize_per_tensor(logits.softmax(dim=-1), PROB_SCALE, 0, torch.uint8).int()
        fixed_p = A.softmax_u8(logits).int()
        acc = R.int8_bmm(q, k, sq, zq, sk, zk, 1.0, 0, torch.int32, True, "float")
        from qlab import intonly

        int_p = intonly.i_softmax(acc, sq * sk).int()
    return {
        "outputs": out,
        "p_codes": {
            "float_vs_torch_max_diff": int((fixed_p - torch_p).abs().max()),
            "float_vs_torch_changed_fraction": round(float((fixed_p != torch_p).float().mean()), 6),
            "int_vs_float_max_diff": int((int_p - fixed_p).abs().max()),
            "int_vs_float_changed_fraction": round(float((int_p != fixed_p).float().mean()), 6),
        },
    }


def attention_section(tokens: list[int], rounds: int) -> dict:
    out = {}
    for T in tokens:
        inp = attention_inputs(T)
        fns = attention_candidates(inp)
        timed = time_interleaved(fns, rounds=rounds)
        sp = speedups(timed, SDPA)
        out[str(T)] = {
            "shape": f"[1, {HEADS}, {T}, {HEAD_DIM}]",
            "load": list(timed.load),
            "candidates": {n: t.as_dict() | {"speedup_vs_sdpa": round(sp[n], 4)} for n, t in timed.items()},
        } | attention_errors(inp, fns)
        print(f"T={T}: " + ", ".join(f"{n} {t.median:.3f} ms (x{sp[n]:.2f})" for n, t in timed.items()), flush=True)
    return out


class Bf16Autocast(torch.nn.Module):
    """The fp32 model under ``torch.autocast("cpu", torch.bfloat16)`` (oneDNN's bf16 matmuls), float32 logits out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


def vit_section(rounds: int, compile_variants: bool, name: str = "vit_small_patch16_224", batch: int = 1,
                grid: bool = False) -> dict:
    """One model at one batch size. ``grid``: only fp32 eager, bf16 autocast, fp32 + Inductor, PT2E int8 + Inductor
    and qlab's default ``quantize_vit`` (the vit_base and batch-16 rows), no operator profile."""
    import timm

    torch._dynamo.reset()  # Inductor's C++ bakes the thread count in: a fresh compile per thread count
    with qlab.scoped(seed=0):
        fp32 = timm.create_model(name, pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    cal = [torch.randn(1, 3, 224, 224, generator=g) for _ in range(4)]
    x = torch.randn(batch, 3, 224, 224, generator=g)
    explicit = vit.set_fused_attn(timm.create_model(name, pretrained=False).eval(), False)
    explicit.load_state_dict(fp32.state_dict())
    variants = {"fp32 eager": fp32}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # the CPU has bf16 dot products (AVX-512 BF16, AMX)
        variants["fp32 model, bf16 autocast (eager)"] = Bf16Autocast(fp32)
    if compile_variants:
        variants["fp32 + Inductor (freezing)"] = pt2e.lower(explicit, x, freezing=True)
        variants["PT2E int8 + Inductor (freezing)"] = pt2e.lower(vit.pt2e_quantize(explicit, cal), x, freezing=True)
    for softmax in ("float",) if grid else ("torch", "float", "int"):
        variants[f"qlab quantize_vit eager, softmax={softmax}"] = vit.quantize_vit(explicit, cal, softmax=softmax)
    if not grid:
        variants["qlab quantize_vit eager, softmax=float, gelu=float"] = vit.quantize_vit(explicit, cal, gelu="float")
        variants["qlab quantize_vit eager, softmax=float, prob_scale=fixed"] = vit.quantize_vit(explicit, cal,
                                                                                                prob_scale="fixed")
        variants["qlab quantize_vit eager, softmax=float, fuse_residual=False"] = vit.quantize_vit(
            explicit, cal, fuse_residual=False)
    with torch.no_grad(), qlab.scoped(inductor={"freezing": True}):
        ref = fp32(x)
        cos = {n: round(float(F.cosine_similarity(m(x).flatten(), ref.flatten(), dim=0)), 6)
               for n, m in variants.items()}
        timed = time_interleaved({n: (lambda m=m: m(x)) for n, m in variants.items()}, rounds=rounds, number=1)
    sp = speedups(timed, "fp32 eager")
    out = {
        "model": f"{name} (random weights)", "batch": batch, "threads": torch.get_num_threads(),
        "rounds": rounds, "load": list(timed.load),
        "variants": {n: t.as_dict() | {"speedup_vs_fp32": round(sp[n], 4), "cosine_to_fp32": cos[n]}
                     for n, t in timed.items()},
    }
    if not grid:
        out["qlab_fused_op_share"] = share = op_shares(variants["qlab quantize_vit eager, softmax=float"], x)
        print("  qlab fused ViT, share of operator time: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    print(f"  {name}, batch {batch}, {torch.get_num_threads()} thread(s):")
    for n, t in timed.items():
        print(f"  {n:58s} {t.median:8.2f} ms  x{sp[n]:.2f}  cosine {cos[n]:.4f}", flush=True)
    return out


def op_shares(model, x, top: int = 8) -> dict[str, float]:
    """Share of self CPU time per operator over 5 calls of ``model(x)`` (torch.profiler), the ``top`` largest."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                model(x)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows)
    rows.sort(key=lambda r: -r[1])
    return {k: round(t / total, 4) for k, t in rows[:top]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21, help="interleaved rounds (at least 15 unless --smoke)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, nargs="+", default=[197, 785])
    ap.add_argument("--smoke", action="store_true", help="3 rounds, 1 thread, 197 tokens, no compile, to /tmp")
    ap.add_argument("--wait", type=float, default=600, help="seconds to wait for the load average to drop")
    ap.add_argument("--out", type=pathlib.Path, default=None,
                    help="default benchmarks/results/attention.json (vit-e2e.json with --grid)")
    ap.add_argument("--grid", nargs="+", metavar="MODEL:BATCH", default=None,
                    help="only end to end, these models and batch sizes, fewer variants (e.g. "
                         "vit_base_patch16_224:1 vit_small_patch16_224:16); --rounds may go down to 7")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("vit-e2e.json" if args.grid else "attention.json")
    if args.smoke:
        args.rounds, args.threads, args.tokens = 3, [1], [197]
        args.out = pathlib.Path("/tmp/attention-smoke.json")
    elif args.rounds < (7 if args.grid else 15):
        ap.error("--rounds must be at least 15 (7 with --grid: the interquartile range needs them)")
    qlab.setup(threads=args.threads[0], quiet=True)
    if qk.backend() != "native":
        ap.error(f"qlab's C++ kernels are not loaded ({qk.backend()}): nothing to measure")
    load_before = loadavg() if args.smoke else wait_for_quiet(0.5, args.wait)
    meta = _env.machine_info() | {
        "qlab_kernels": f"{qk.backend()} ({qk.isa()})",
        "loadavg_before": load_before,
        "command": "python benchmarks/bench_attention.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    t0 = time.perf_counter()
    if args.grid:
        grid = {}
        for threads in args.threads:
            with qlab.scoped(threads=threads):
                for item in args.grid:
                    name, batch = item.rsplit(":", 1)
                    grid.setdefault(str(threads), {}).setdefault(name, {})[batch] = vit_section(
                        args.rounds, not args.smoke, name, int(batch), grid=True)
        write_recording(args.out, meta, t0, e2e=grid)
        return 0
    att, e2e = {}, {}
    for threads in args.threads:
        with qlab.scoped(threads=threads):
            print(f"-- {threads} thread(s)", flush=True)
            att[str(threads)] = attention_section(args.tokens, args.rounds)
            e2e[str(threads)] = vit_section(args.rounds, not args.smoke)
    write_recording(args.out, meta, t0, attention=att, vit_small=e2e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
