#!/usr/bin/env python
"""Every int8 path of notebook 10 on the real all-MiniLM-L6-v2: accuracy, and latency across threads, batch sizes
and sequence lengths.

    .venv/bin/python benchmarks/bench_transformer.py                 # writes benchmarks/results/transformer.json
    .venv/bin/python benchmarks/bench_transformer.py --smoke         # 3 rounds, 2 shapes, 1 thread -> /tmp
    .venv/bin/python benchmarks/bench_transformer.py --allow-busy    # record on a busy machine (load is recorded)

(a) Accuracy of each path against fp32 (``qlab.transformer``): min and mean cosine of the 20 sentences of the
    issue's table (``SENTENCES``, one padded batch), retrieval agreement over the 205 sentences of
    ``data/sentence_pairs.tsv``, Spearman's correlation with the 170 hand-written similarity scores with a
    bootstrap interval, and its paired difference to fp32. Also SmoothQuant across alpha (static PT2E, the
    q/dq graph), and what Inductor generated for each compiled path (which kernels it calls).
(b) Latency: every path timed in the same run by ``qlab.timing.time_interleaved`` (``--rounds`` >= 15
    interleaved rounds; medians, interquartile ranges, speedups over fp32 eager paired per round), for each
    thread count, on the padded 20-sentence batch and on full-length batches of ``--batches`` x ``--seqs``
    tokens. Compiled paths are compiled once per thread count with symbolic shapes, freezing on, and timed
    inside the same freezing scope (a recompile outside it would silently produce the slow unfrozen graph).

It refuses to record on a busy machine (1-minute load average above 0.5; it waits ``--wait`` seconds) unless
``--allow-busy``; the load before and after is recorded either way, with the CPU, its ISA, the int8 units each
library may use and the versions. Results are saved after every step (``--out``), and a re-run with the same
``--out`` skips what is already there (``--fresh`` starts over).
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
from qlab import _env, bert_attention, smoothquant  # noqa: E402
from qlab import transformer as T  # noqa: E402
from qlab import transformer_int8 as TI  # noqa: E402
from qlab.timing import loadavg, speedups, time_interleaved, wait_for_quiet  # noqa: E402

for msg in (".*torch.ao.quantization.*deprecated", "Please use quant_min and quant_max",
            ".*quantized tensor creation functions.*deprecated"):
    warnings.filterwarnings("ignore", message=msg)

FP32 = "fp32 eager"
EAGER = ["fp32 eager", "bf16 autocast", "torch.ao dynamic", "torchao dynamic", "torchao weight-only",
         "qlab int8 (eager)"]
COMPILED = {"fp32 compiled": "fp32 eager", "torch.ao dynamic compiled": "torch.ao dynamic",
            "torchao dynamic compiled": "torchao dynamic", "torchao weight-only compiled": "torchao weight-only",
            "PT2E static compiled": "PT2E static", "PT2E static + SmoothQuant compiled": "PT2E static + SmoothQuant",
            "PT2E static + SmoothQuant, FFN-down fp32 compiled": "PT2E static + SmoothQuant, FFN-down fp32"}
KERNELS = ("onednn.qlinear_pointwise", "extern_kernels._int_mm", "mkl._mkl_linear", "extern_kernels.addmm",
           "extern_kernels.mm", "quantized.linear_dynamic", "mkldnn._linear_pointwise")


def build(model, tok, cal, alpha: float, alpha_skip: float) -> tuple[dict, dict]:
    """The eager paths and the graphs the compiled ones start from."""
    am = smoothquant.activation_maxima(model, cal)
    eager = {
        "fp32 eager": model,
        "bf16 autocast": TI.bf16_autocast(model),
        "torch.ao dynamic": TI.ao_dynamic(model),
        "torchao dynamic": TI.torchao_int8(model, "dynamic"),
        "torchao weight-only": TI.torchao_int8(model, "weight_only"),
        "qlab int8 (eager)": bert_attention.quantize_bert(model, cal),
    }
    graphs = {"PT2E static": TI.pt2e_static(model, cal),
              "PT2E static + SmoothQuant": TI.pt2e_static(smoothquant.smooth(model, am, alpha), cal),
              "PT2E static + SmoothQuant, FFN-down fp32": TI.pt2e_static(
                  smoothquant.smooth(model, am, alpha_skip), cal, skip=TI.ffn_down_names(model))}
    return eager, graphs


def compile_all(eager, graphs, example, bar) -> tuple[dict, dict, dict]:
    from torch._inductor.utils import run_and_get_code

    out, calls, errors = {}, {}, {}
    for name, base in COMPILED.items():
        bar.set_postfix_str(f"compiling {name}")
        src = eager.get(base, graphs.get(base))
        t0 = time.perf_counter()
        try:
            flags = TI.TORCHAO_INDUCTOR if base.startswith("torchao") else None  # what torchao would have set
            compiled, code = run_and_get_code(TI.compiled, src, example, inductor=flags)
            out[name] = compiled
            text = "\n".join(code)
            calls[name] = {k: text.count(k) for k in KERNELS if text.count(k)} | {
                "compile_s": round(time.perf_counter() - t0, 1)}
        except Exception as exc:  # recorded, not hidden: the notebook shows what fails
            errors[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        bar.update()
    return out, calls, errors


def quality(models: dict, ref: dict, tok, batch) -> dict:
    pairs = ref["pairs"]
    out = {}
    with qlab.scoped(inductor={"freezing": True}), torch.no_grad():
        for name, m in models.items():
            e = m(batch["input_ids"], batch["attention_mask"]).float()
            er = T.embed(m, tok, ref["retrieval_sentences"], 41)
            e1, e2 = T.embed(m, tok, pairs.first, 34), T.embed(m, tok, pairs.second, 34)
            cos = T.cosines(e, ref["emb"])
            rho, ci = T.sts_spearman(e1, e2, pairs.scores)
            d, dci = T.paired_difference(e1, e2, ref["e1"], ref["e2"], pairs.scores)
            out[name] = {"min_cosine": round(float(cos.min()), 5), "mean_cosine": round(float(cos.mean()), 5),
                         "worst_sentence": T.SENTENCES[int(cos.argmin())],
                         "retrieval_agreement": round(T.retrieval_agreement(er, ref["er"])[0], 5),
                         "sts_spearman": round(rho, 4), "sts_ci95": [round(ci[0], 4), round(ci[1], 4)],
                         "sts_diff_vs_fp32": round(d, 4), "sts_diff_ci95": [round(dci[0], 4), round(dci[1], 4)]}
    return out


def inputs(tok, batch: int, seq: int) -> dict:
    """``batch`` rows of exactly ``seq`` real tokens (no padding): the SENTENCES run on, cut at ``seq``."""
    ids = [i for s in T.SENTENCES * 8 for i in tok(s, add_special_tokens=False)["input_ids"]][: seq - 2]
    row = torch.tensor([tok.cls_token_id, *ids, tok.sep_token_id])
    ids = torch.stack([row] * batch)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def time_shape(models: dict, b: dict, rounds: int) -> dict:
    fns = {n: (lambda m=m: m(b["input_ids"], b["attention_mask"])) for n, m in models.items()}
    with qlab.scoped(inductor={"freezing": True}):
        t = time_interleaved(fns, rounds=rounds, warmup=2)
    sp = speedups(t, FP32)
    return {"shape": list(b["input_ids"].shape), "load": list(t.load),
            "paths": {n: v.as_dict() | {"speedup_vs_fp32": round(sp[n], 4)} for n, v in t.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (at least 15 unless --smoke)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--seqs", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant alpha of the timed path")
    ap.add_argument("--alpha-skip", type=float, default=0.75, help="alpha of the path with FFN-down in fp32")
    ap.add_argument("--smoke", action="store_true", help="3 rounds, 1 thread, 2 shapes, writes to /tmp")
    ap.add_argument("--allow-busy", action="store_true", help="record although the load average is above 0.5")
    ap.add_argument("--wait", type=float, default=600)
    ap.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.threads, args.batches, args.seqs, args.alphas = 3, [1], [1], [16], [0.5]
        args.out = args.out or pathlib.Path("/tmp/transformer-smoke.json")
    elif args.rounds < 15:
        ap.error("--rounds must be at least 15 (the interquartile range needs them)")
    args.out = args.out or ROOT / "benchmarks" / "results" / "transformer.json"
    qlab.setup(threads=args.threads[0], quiet=True)
    import qlab.kernels as k

    load_before = loadavg() if args.allow_busy else wait_for_quiet(0.5, args.wait)
    res = {} if args.fresh or not args.out.exists() else json.loads(args.out.read_text())
    res.setdefault("meta", {}).update(_env.machine_info() | {
        "qlab_kernels": f"{k.backend()} ({k.isa()})", "loadavg_before": load_before,
        "busy_allowed": args.allow_busy, "smoke": args.smoke,
        "cpu_flags_bf16": sorted(f for f in _env.cpu_flags() if "bf16" in f or "amx" in f),
        "command": "python benchmarks/bench_transformer.py " + " ".join(sys.argv[1:])})

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")

    t_start = time.perf_counter()
    model, tok = T.load()
    model = T.Embedder(model).eval()
    cal_s = T.calibration_sentences()
    cal = [T.tokenize(tok, cal_s[i : i + 16]) for i in range(0, len(cal_s), 16)]
    batch = T.tokenize(tok, T.SENTENCES)
    pairs = T.sentence_pairs()
    rs = T.retrieval_sentences(pairs)
    with torch.no_grad():
        ref = {"emb": model(batch["input_ids"], batch["attention_mask"]), "er": T.embed(model, tok, rs, 41),
               "e1": T.embed(model, tok, pairs.first, 34), "e2": T.embed(model, tok, pairs.second, 34),
               "pairs": pairs, "retrieval_sentences": rs}

    if "smoothquant_alpha" not in res:
        am = smoothquant.activation_maxima(model, cal)
        sweep = {}
        for a in tqdm(args.alphas, desc="SmoothQuant alpha (static PT2E q/dq)", dynamic_ncols=True):
            smoothed = smoothquant.smooth(model, am, a)
            g = TI.pt2e_static(smoothed, cal)
            sweep[f"{a:g}"] = quality({"x": g}, ref, tok, batch)["x"]
            g = TI.pt2e_static(smoothed, cal, skip=TI.ffn_down_names(model))
            sweep[f"{a:g}, FFN-down fp32"] = quality({"x": g}, ref, tok, batch)["x"]
        # the FFN down-projection smoothed with an explicit per-channel multiply (GELU cannot absorb 1/s)
        g = TI.pt2e_static(smoothquant.smooth(model, am, args.alpha, ffn_down=True), cal)
        sweep[f"{args.alpha:g}, FFN-down smoothed too"] = quality({"x": g}, ref, tok, batch)["x"]
        sweep["none"] = quality({"x": TI.pt2e_static(model, cal)}, ref, tok, batch)["x"]
        res["smoothquant_alpha"] = sweep
        save()

    if "int4" not in res:
        try:
            TI.torchao_int8(model, "int4_weight_only")(batch["input_ids"], batch["attention_mask"])
            res["int4"] = "ran"
        except Exception as exc:
            res["int4"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        save()

    for threads in args.threads:
        key = str(threads)
        done = res.setdefault("latency", {}).setdefault(key, {})
        shapes = [("sentences", batch)] + [(f"{b}x{s}", inputs(tok, b, s)) for b in args.batches for s in args.seqs]
        if all(name in done.get("shapes", {}) for name, _ in shapes) and ("quality" in res or threads != 1):
            continue
        with qlab.scoped(threads=threads):
            torch._dynamo.reset()  # Inductor bakes the thread count into its C++: compile anew per count
            bar = tqdm(total=len(COMPILED) + 1 + len(shapes), desc=f"{threads} thread(s)", dynamic_ncols=True)
            bar.set_postfix_str("quantizing")
            eager, graphs = build(model, tok, cal, args.alpha, args.alpha_skip)
            bar.update()
            comp, calls, errors = compile_all(eager, graphs, batch, bar)
            models = {**eager, **comp}
            done["generated_calls"], done["compile_errors"] = calls, errors
            if "quality" not in res:
                bar.set_postfix_str("quality")
                res["quality"] = quality(models, ref, tok, batch)
                save()
            for name, b in shapes:
                if name in done.setdefault("shapes", {}):
                    bar.update()
                    continue
                bar.set_postfix_str(f"timing {name}")
                done["shapes"][name] = time_shape(models, b, args.rounds)
                save()
                bar.update()
            bar.close()
            del models, eager, graphs, comp
        print(json.dumps({n: s["paths"][FP32]["median_ms"] for n, s in done["shapes"].items()}), flush=True)
    res["meta"]["loadavg_after"] = loadavg()
    res["meta"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
