#!/usr/bin/env python
"""The four int8 fixes of notebook 08, measured: accuracy on the digits ViT, latency on ViT-S/16.

    .venv/bin/python benchmarks/bench_vit.py                    # writes benchmarks/results/vit.json
    .venv/bin/python benchmarks/bench_vit.py --repeats 40 --out /tmp/vit.json

(a) Accuracy: the trained digits ViT (``qlab.vit.load_pretrained``) and each fix, on the
    364 test digits: top-1, agreement with fp32, max abs error and cosine of the logits.
    Fix 4's int8 calls are recomputed with ``qlab.kernels.reference`` (must be equal).
(b) Latency: timm ``vit_small_patch16_224`` with random weights (no download), batch 1,
    every variant timed in the same run, *interleaved* (one call of each variant per
    round, ``--repeats`` rounds), medians; ratios against fp32 eager (timm's default
    SDPA attention). Fix 3 runs under ``torch.compile`` (Inductor) with
    ``torch._inductor.config.freezing = True`` and, for comparison, without it.

Timings depend on the machine and its load: the JSON records the ISA, the thread
count, torch/torchao/timm versions and the load average before and after. Only the
ratios measured in one run are meaningful.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import platform
import sys
import time
import warnings

import torch
from tqdm import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qlab  # noqa: E402
from qlab import data, pt2e_lowering, vit  # noqa: E402
from qlab._env import _version, isa_summary  # noqa: E402

# Announced and explained in notebook 08; silenced here so the log stays readable.
for msg in (
    ".*torch.ao.quantization.*deprecated",
    "Please use quant_min and quant_max",
    ".*quantized tensor creation functions.*deprecated",
):
    warnings.filterwarnings("ignore", message=msg)


def compile_inductor(model, freezing: bool):
    import torch._inductor.config as cfg

    cfg.freezing = freezing  # read when the model compiles, i.e. at its first call
    return torch.compile(model, backend="inductor")


def accuracy_section(calib_images: int) -> dict:
    model = vit.load_pretrained()
    x, y = data.digits("test", 32).tensors
    cal = data.calibration_batches(calib_images, 32, 32)
    ref = vit.predict(model, x)
    out = {"fp32": vit.compare(ref, ref, y)}
    variants = {
        "fix1 eager dequant": lambda: vit.eager_quantize_vit(model, cal, "dequant"),
        "fix2 eager FloatFunctional": lambda: vit.eager_quantize_vit(model, cal, "functional"),
    }
    bar = tqdm(total=6, desc="accuracy", unit="fix", dynamic_ncols=True)
    for name, make in variants.items():
        bar.set_postfix_str(name)
        out[name] = vit.compare(vit.predict(make(), x), ref, y)
        bar.update()
    bar.set_postfix_str("fix3 PT2E")
    g3 = vit.pt2e_quantize(model, cal)
    out["fix3 PT2E (reference graph)"] = vit.compare(vit.predict(g3, x), ref, y)
    bar.update()
    bar.set_postfix_str("fix3 PT2E + Inductor (compiling)")
    c3 = compile_inductor(g3, freezing=True)
    from torch._inductor.utils import run_and_get_code

    with torch.no_grad():
        logits3 = torch.cat([c3(xb) for xb in torch.split(x, 128)])
        _, code = run_and_get_code(c3, x[:128])
    code = "\n".join(code)
    out["fix3 PT2E + Inductor"] = vit.compare(logits3, ref, y) | {
        "max_diff_vs_reference_graph": float((logits3 - vit.predict(g3, x)).abs().max()),
        # what Inductor generated: int8 oneDNN linears, and the attention matmuls as float32 bmm
        "generated_calls": {k: code.count(k) for k in ("onednn.qlinear_pointwise", "extern_kernels.bmm")},
    }
    bar.update()
    bar.set_postfix_str("fix4 lowered / eager")
    g4, report = pt2e_lowering.lower_to_qlab(vit.pt2e_quantize(model, cal))
    out["fix4 PT2E lowered to qlab"] = vit.compare(vit.predict(g4, x), ref, y) | {"lowering": report}
    out["fix4 PT2E lowered to qlab"]["int8_calls"] = vit.check_int8_calls(g4, x[:8])
    bar.update()
    e4 = vit.quantize_vit(model, cal)
    out["fix4 eager qlab (quantize_vit)"] = vit.compare(vit.predict(e4, x), ref, y)
    out["fix4 eager qlab (quantize_vit)"]["int8_calls"] = vit.check_int8_calls(e4, x[:8])
    bar.update()
    bar.close()
    return out


def latency_section(repeats: int, calib: int, compile_fix3: bool) -> dict:
    import timm

    torch._dynamo.reset()  # a fresh compile cache per thread count (Inductor's C++ bakes the thread count in)
    torch.manual_seed(0)
    fp32 = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    g = torch.Generator().manual_seed(0)
    cal = [torch.randn(1, 3, 224, 224, generator=g) for _ in range(calib)]
    x = torch.randn(1, 3, 224, 224, generator=g)
    explicit = vit.set_fused_attn(timm.create_model("vit_small_patch16_224", pretrained=False).eval(), False)
    explicit.load_state_dict(fp32.state_dict())
    variants = {"fp32 eager (SDPA)": fp32, "fp32 eager (explicit attention)": explicit}
    compile_s = {}
    bar = tqdm(
        total=5 if compile_fix3 else 2,
        desc=f"latency setup ({torch.get_num_threads()} thr)",
        unit="step",
        dynamic_ncols=True,
    )
    bar.set_postfix_str("fixes 1-3")
    t0 = time.perf_counter()
    variants["fix1 eager dequant"] = vit.eager_quantize_vit(explicit, cal, "dequant")
    variants["fix2 eager FloatFunctional"] = vit.eager_quantize_vit(explicit, cal, "functional")
    g3 = vit.pt2e_quantize(explicit, cal, dynamic_batch=False)
    compile_s["quantize fixes 1-3"] = time.perf_counter() - t0
    bar.update()
    if compile_fix3:
        for name, freezing, model in (
            ("fp32 + Inductor (freezing)", True, explicit),
            ("fix3 PT2E + Inductor (freezing)", True, g3),
            ("fix3 PT2E + Inductor (no freezing)", False, copy.deepcopy(g3)),
        ):
            bar.set_postfix_str(f"compiling {name}")
            t0 = time.perf_counter()
            c = compile_inductor(model, freezing)
            with torch.no_grad():
                c(x)
                c(x)
            compile_s[name] = time.perf_counter() - t0
            variants[name] = c
            bar.update()
    bar.set_postfix_str("fix 4")
    variants["fix4 PT2E lowered to qlab"] = pt2e_lowering.lower_to_qlab(
        vit.pt2e_quantize(explicit, cal, dynamic_batch=False)
    )[0]
    variants["fix4 eager qlab (quantize_vit)"] = vit.quantize_vit(explicit, cal)
    bar.update()
    bar.close()

    base = "fp32 eager (SDPA)"
    timed = vit.time_interleaved(
        {n: (lambda m=m: m(x)) for n, m in variants.items()}, repeats=repeats, warmup=2, baseline=base
    )
    out = {
        n: {
            "median_ms": round(t["median_ms"], 3),
            "ratio_vs_fp32": round(t["median_ms"] / timed[base]["median_ms"], 4),
            "median_round_ratio": round(t["ratio"], 4),
        }
        for n, t in timed.items()
    }
    return {
        "model": "vit_small_patch16_224 (random weights)",
        "batch": 1,
        "repeats": repeats,
        "variants": out,
        "setup_s": {k: round(v, 1) for k, v in compile_s.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time (accuracy: the first)"
    )
    ap.add_argument("--calib-images", type=int, default=128, help="digits images for calibration")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (slow to compile)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "vit.json")
    args = ap.parse_args()
    qlab.setup(threads=args.threads[0], quiet=True)
    import qlab.kernels as k

    meta = {
        "torch": torch.__version__,
        "torchao": _version("torchao"),
        "timm": _version("timm"),
        "python": platform.python_version(),
        "isa": isa_summary(),
        "cpu_count": os.cpu_count(),
        "qlab_kernels": f"{k.backend()} ({k.isa()})",
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "command": "python benchmarks/bench_vit.py " + " ".join(sys.argv[1:]),
    }
    t0 = time.perf_counter()
    acc = accuracy_section(args.calib_images)
    print(json.dumps(acc, indent=1), flush=True)
    lat = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        lat[str(threads)] = latency_section(args.repeats, 4, not args.no_compile)
        print(json.dumps(lat[str(threads)], indent=1), flush=True)
    meta["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "digits_accuracy": acc, "latency": lat}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
