#!/usr/bin/env python
"""The four int8 fixes of notebook 08, measured: accuracy on the digits ViT, latency on ViT-S/16.

    .venv/bin/python benchmarks/bench_vit.py                    # writes benchmarks/results/vit.json
    .venv/bin/python benchmarks/bench_vit.py --rounds 31 --out /tmp/vit.json

(a) Accuracy: the trained digits ViT (``qlab.checkpoints.load("digits_vit")``) and each fix on the
    364 test digits: top-1, agreement with fp32, max abs error and cosine of the logits. Fix 4's int8
    calls are recomputed with ``qlab.kernels.reference`` (must be equal).
(b) Latency: timm ``vit_small_patch16_224`` with random weights (no download), batch 1, every variant
    timed in the same run by ``qlab.timing.time_interleaved`` (``--rounds`` interleaved rounds, at
    least 15): per variant the median and the interquartile range, and the speedup over fp32 eager
    paired per round. Fix 3 and fp32 run under ``torch.compile`` (Inductor), with freezing and without.

The script refuses to record on a busy machine (1-minute load average above 0.5: it waits up to
``--wait`` seconds for it to drop), and records the load average before and after, the CPU, its ISA,
the int8 units each library may use and the versions. Only ratios measured in one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings

import torch
from tqdm import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qlab  # noqa: E402
from qlab import _env, checkpoints, data, pt2e, pt2e_lowering, vit, vit_inspect  # noqa: E402
from qlab.timing import speedups, time_interleaved, wait_for_quiet, write_recording  # noqa: E402

# Explained in notebook 00 and filtered by qlab.setup there; filtered here so the log stays readable.
for msg in (
    ".*torch.ao.quantization.*deprecated",
    "Please use quant_min and quant_max",
    ".*quantized tensor creation functions.*deprecated",
):
    warnings.filterwarnings("ignore", message=msg)

FP32 = "fp32 eager (SDPA)"


def accuracy_section(calib_images: int) -> dict:
    model = checkpoints.load("digits_vit")
    x, y = data.digits("test", 32).tensors
    cal = data.calibration_batches(calib_images, 32, 32)
    ref = vit.predict(model, x)
    out = {"fp32": vit.compare(ref, ref, y)}
    bar = tqdm(total=5, desc="accuracy", unit="fix", dynamic_ncols=True)
    for name, attention in (("fix1 eager dequant", "dequant"), ("fix2 eager FloatFunctional", "functional")):
        bar.set_postfix_str(name)
        out[name] = vit.compare(vit.predict(vit.eager_quantize_vit(model, cal, attention), x), ref, y)
        bar.update()
    bar.set_postfix_str("fix3 PT2E + Inductor (compiling)")
    g3 = vit.pt2e_quantize(model, cal)
    out["fix3 PT2E (reference graph)"] = vit.compare(vit.predict(g3, x), ref, y)
    c3 = pt2e.lower(g3, x[:128], freezing=True)
    from torch._inductor.utils import run_and_get_code

    padded = torch.cat([x, x[: -len(x) % 128]])  # whole batches of 128: the shape it was compiled for
    with torch.no_grad(), qlab.scoped(inductor={"freezing": True}):
        logits3 = torch.cat([c3(xb) for xb in torch.split(padded, 128)])[: len(x)]
        _, code = run_and_get_code(c3, x[:128])
    code = "\n".join(code)
    out["fix3 PT2E + Inductor"] = vit.compare(logits3, ref, y) | {
        "max_diff_vs_reference_graph": float((logits3 - vit.predict(g3, x)).abs().max()),
        # what Inductor generated: int8 oneDNN linears, and the attention matmuls as float32 bmm
        "generated_calls": {k: code.count(k) for k in ("onednn.qlinear_pointwise", "extern_kernels.bmm")},
    }
    bar.update()
    bar.set_postfix_str("fix4 lowered / eager")
    g4, report = pt2e_lowering.lower_to_qlab(vit.pt2e_quantize(model, cal), softmax="torch")
    out["fix4 PT2E lowered to qlab"] = vit.compare(vit.predict(g4, x), ref, y) | {"lowering": report}
    out["fix4 PT2E lowered to qlab"]["int8_calls"] = vit_inspect.check_int8_calls(g4, x[:8])
    bar.update()
    e4 = vit.quantize_vit(model, cal, softmax="torch", gelu="float", prob_scale="fixed")  # as recorded in vit.json
    out["fix4 eager qlab (quantize_vit)"] = vit.compare(vit.predict(e4, x), ref, y)
    out["fix4 eager qlab (quantize_vit)"]["int8_calls"] = vit_inspect.check_int8_calls(e4, x[:8])
    bar.update()
    bar.close()
    return out


def latency_section(rounds: int, calib: int, compile_variants: bool) -> dict:
    import timm

    torch._dynamo.reset()  # a fresh compile cache per thread count (Inductor's C++ bakes the thread count in)
    with qlab.scoped(seed=0):
        fp32 = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    cal = [torch.randn(1, 3, 224, 224, generator=g) for _ in range(calib)]
    x = torch.randn(1, 3, 224, 224, generator=g)
    explicit = vit.set_fused_attn(timm.create_model("vit_small_patch16_224", pretrained=False).eval(), False)
    explicit.load_state_dict(fp32.state_dict())
    variants = {FP32: fp32, "fp32 eager (explicit attention)": explicit}
    setup_s = {}
    bar = tqdm(total=5 if compile_variants else 2, desc=f"latency setup ({torch.get_num_threads()} thr)",
               unit="step", dynamic_ncols=True)
    bar.set_postfix_str("fixes 1-3")
    t0 = time.perf_counter()
    variants["fix1 eager dequant"] = vit.eager_quantize_vit(explicit, cal, "dequant")
    variants["fix2 eager FloatFunctional"] = vit.eager_quantize_vit(explicit, cal, "functional")
    g3 = vit.pt2e_quantize(explicit, cal)
    setup_s["quantize fixes 1-3"] = time.perf_counter() - t0
    bar.update()
    if compile_variants:
        for name, freezing, model in (
            ("fp32 + Inductor (freezing)", True, explicit),
            ("fix3 PT2E + Inductor (freezing)", True, g3),
            ("fix3 PT2E + Inductor (no freezing)", False, g3),
        ):
            bar.set_postfix_str(f"compiling {name}")
            t0 = time.perf_counter()
            variants[name] = pt2e.lower(model, x, freezing=freezing)  # a private copy, compiled now
            setup_s[name] = time.perf_counter() - t0
            bar.update()
    bar.set_postfix_str("fix 4")
    variants["fix4 PT2E lowered to qlab"] = pt2e_lowering.lower_to_qlab(vit.pt2e_quantize(explicit, cal),
                                                                        softmax="torch")[0]
    variants["fix4 eager qlab (quantize_vit)"] = vit.quantize_vit(explicit, cal, softmax="torch", gelu="float",
                                                                prob_scale="fixed")
    bar.update()
    bar.close()

    timed = time_interleaved({n: (lambda m=m: m(x)) for n, m in variants.items()}, rounds=rounds, warmup=2, number=1)
    sp = speedups(timed, FP32)
    return {
        "model": "vit_small_patch16_224 (random weights)",
        "batch": 1,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "load": list(timed.load),
        "variants": {n: t.as_dict() | {"speedup_vs_fp32": round(sp[n], 4)} for n, t in timed.items()},
        "setup_s": {k: round(v, 1) for k, v in setup_s.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21, help="interleaved rounds (at least 15)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    ap.add_argument("--calib-images", type=int, default=128, help="digits images for calibration")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (slow to compile)")
    ap.add_argument("--wait", type=float, default=600, help="seconds to wait for the load average to drop")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "vit.json")
    args = ap.parse_args()
    if args.rounds < 15:
        ap.error("--rounds must be at least 15 (the interquartile range needs them)")
    qlab.setup(threads=args.threads[0], quiet=True)
    import qlab.kernels as k

    load_before = wait_for_quiet(0.5, args.wait)
    meta = _env.machine_info() | {
        "qlab_kernels": f"{k.backend()} ({k.isa()})",
        "loadavg_before": load_before,
        "command": "python benchmarks/bench_vit.py " + " ".join(sys.argv[1:]),
    }
    t0 = time.perf_counter()
    acc = accuracy_section(args.calib_images)
    print(json.dumps(acc, indent=1), flush=True)
    lat = {}
    for threads in args.threads:
        with qlab.scoped(threads=threads):
            lat[str(threads)] = latency_section(args.rounds, 4, not args.no_compile)
        print(json.dumps(lat[str(threads)], indent=1), flush=True)
    write_recording(args.out, meta, t0, digits_accuracy=acc, latency=lat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
