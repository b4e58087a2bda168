#!/usr/bin/env python
"""qlab's int8 linear against the int8 linear PT2E + Inductor runs: oneDNN's prepacked ``qlinear_pointwise``.

    .venv/bin/python benchmarks/bench_linear.py             # 1 and 2 threads -> benchmarks/results/linear.json
    .venv/bin/python benchmarks/bench_linear.py --smoke     # 3 rounds, 1 thread, one shape -> /tmp
    .venv/bin/python benchmarks/bench_linear.py --act-bits 7 --out benchmarks/results/linear-avx2-7bit.json

ViT-B's four linears (qkv 768->2304, proj 768->768, fc1 768->3072, fc2 3072->768) at 197 tokens (batch 1) and
16 x 197 tokens, per-channel symmetric int8 weights, a float bias, uint8 activations with a zero point. Both sides
start from the same uint8 codes and produce the same output (uint8 requantized, or float32), so neither pays for
quantizing its input; oneDNN's weight is prepacked once (``torch.ops.onednn.qlinear_prepack``, what Inductor's
freezing does); qlab runs twice, packing inside every call (``int8_linear``) and prepacked once
(``int8_linear_packed``, whose output is asserted equal to ``int8_linear``'s). Timed interleaved by
``qlab.timing.time_interleaved`` (medians, IQRs, ratios paired per round); the outputs are compared (uint8: codes
within 1; float32: max error), and each speed as a share of qlab's path's probed peak (``pct_peak``, notebook 12's
roofline). Refuses to record when the 1-minute load average is above 0.5 (waits ``--wait`` s);
records the machine and load. ``--act-bits 7``: activations quantized to [0, 127] (PyTorch's ``reduce_range``), the
same codes on both sides; on the AVX2 path qlab then multiplies with ``vpmaddubsw``, exact for 7-bit codes (notebook
12).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qlab  # noqa: E402
import qlab.kernels as qk  # noqa: E402
from qlab import _env, roofline  # noqa: E402
from qlab.timing import loadavg, speedups, time_interleaved, wait_for_quiet, write_recording  # noqa: E402

SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}
ONEDNN, QLAB, FP32 = "oneDNN qlinear_pointwise (prepacked)", "qlab int8_linear", "fp32 F.linear"
PACKED = "qlab int8_linear_packed (prepacked)"


def case(M: int, K: int, N: int, seed: int = 0, act_bits: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g) * 0.1
    xs = float(x.max() - x.min()) / (2**act_bits - 1)
    xz = int(round(-float(x.min()) / xs))
    ws = w.abs().amax(1) / 127
    wq = torch.round(w / ws[:, None]).clamp(-127, 127).to(torch.int8)
    xq = qk.quantize_per_tensor(x, xs, xz, torch.uint8)
    y = F.linear(x, w, b)
    ys = float(y.max() - y.min()) / 255
    yz = int(round(-float(y.min()) / ys))
    return {"x": x, "w": w, "b": b, "xq": xq, "xs": xs, "xz": xz, "wq": wq, "ws": ws, "ys": ys, "yz": yz}


def candidates(c: dict, out_dtype: torch.dtype) -> dict:
    packed = torch.ops.onednn.qlinear_prepack(c["wq"], list(c["xq"].shape))
    wz = torch.zeros(c["ws"].shape, dtype=torch.int64)
    ys, yz = (c["ys"], c["yz"]) if out_dtype == torch.uint8 else (1.0, 0)

    def onednn():
        return torch.ops.onednn.qlinear_pointwise(c["xq"], c["xs"], c["xz"], packed, c["ws"], wz, c["b"], ys, yz,
                                                  out_dtype, "none", [], "")

    def ours():
        return torch.ops.qlab.int8_linear(c["xq"], c["wq"], c["ws"], c["b"], c["xs"], c["xz"], ys, yz, out_dtype,
                                          False, "float")

    qpacked = torch.ops.qlab.pack_linear_weight(c["wq"])
    n_out = c["wq"].shape[0]

    def ours_packed():
        return torch.ops.qlab.int8_linear_packed(c["xq"], qpacked, n_out, c["ws"], c["b"], c["xs"], c["xz"], ys, yz,
                                                 out_dtype, False, None, "float")

    return {FP32: lambda: F.linear(c["x"], c["w"], c["b"]), ONEDNN: onednn, QLAB: ours, PACKED: ours_packed}


def agreement(fns: dict, out_dtype: torch.dtype) -> dict:
    with torch.no_grad():
        a, b, p = fns[ONEDNN](), fns[QLAB](), fns[PACKED]()
    assert torch.equal(b, p), "int8_linear_packed must equal int8_linear bit for bit"
    if out_dtype == torch.uint8:
        return {"max_code_diff": int((a.int() - b.int()).abs().max()),
                "codes_differing": round(float((a != b).float().mean()), 6)}
    return {"max_abs_diff": float((a - b).abs().max()), "max_abs": float(a.abs().max())}


def run(threads: int, tokens: list[int], rounds: int, shapes: dict, peak: float, act_bits: int = 8) -> dict:
    """``peak``: one core's probed int8 peak (G multiply-adds/s) of the path qlab runs; x threads is the roof."""
    out = {}
    for M in tokens:
        for name, (K, N) in shapes.items():
            c = case(M, K, N, act_bits=act_bits)
            assert int(c["xq"].max()) < 2**act_bits
            for out_dtype in (torch.uint8, torch.float32):
                fns = candidates(c, out_dtype)
                t = time_interleaved(fns, rounds=rounds)
                sp = speedups(t, ONEDNN)
                macs = M * K * N
                key = f"{name} {K}->{N}, M={M}, out {str(out_dtype).split('.')[-1]}"
                out[key] = {
                    "load": list(t.load),
                    "candidates": {n: v.as_dict() | {"speed_vs_onednn": round(sp[n], 4),
                                                     "gmacs": round(macs / v.median / 1e6, 1),
                                                     "pct_peak": round(100 * macs / v.median / 1e6 / (peak * threads),
                                                                       1)} for n, v in t.items()},
                } | agreement(fns, out_dtype)
                times = ", ".join(f"{n.split(' (')[0]} {v.median:.3f} ms" for n, v in t.items())
                print(f"{threads} thr {key:36s} {times}  qlab/oneDNN x{sp[QLAB]:.2f}, prepacked x{sp[PACKED]:.2f}",
                      flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, nargs="+", default=[197, 16 * 197])
    ap.add_argument("--smoke", action="store_true", help="3 rounds, 1 thread, 197 tokens, proj only, to /tmp")
    ap.add_argument("--wait", type=float, default=600)
    ap.add_argument("--act-bits", type=int, choices=[7, 8], default=8,
                    help="activation codes in [0, 2**bits - 1] (7: reduce_range), the same on both sides")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "linear.json")
    args = ap.parse_args(argv)
    shapes = SHAPES
    if args.smoke:
        args.rounds, args.threads, args.tokens, shapes = 3, [1], [197], {"proj": SHAPES["proj"]}
        if args.out == ap.get_default("out"):
            args.out = pathlib.Path("/tmp/linear-smoke.json")
    elif args.rounds < 15:
        ap.error("--rounds must be at least 15 (the interquartile range needs them)")
    qlab.setup(threads=args.threads[0], quiet=True)
    if qk.backend() != "native":
        ap.error(f"qlab's C++ kernels are not loaded ({qk.backend()}): nothing to measure")
    meta = _env.machine_info() | {
        "qlab_kernels": f"{qk.backend()} ({qk.isa()})",
        "loadavg_before": loadavg() if args.smoke else wait_for_quiet(0.5, args.wait),
        "act_bits": args.act_bits,
        "command": "python benchmarks/bench_linear.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    t0 = time.perf_counter()
    peak = roofline.peak_gmacs(qk.isa())
    meta["peak_gmacs_per_core"] = round(peak, 1)
    meta["peak"] = (f"{qk.isa()}'s multiply-add instruction on registers (qlab.roofline.peak_gmacs, one core) x "
                    "threads; pct_peak of every candidate, oneDNN's and fp32's included, is against it")
    results = {}
    for threads in args.threads:
        with qlab.scoped(threads=threads):
            results[str(threads)] = run(threads, args.tokens, args.rounds, shapes, peak, args.act_bits)
    write_recording(args.out, meta, t0, results=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
