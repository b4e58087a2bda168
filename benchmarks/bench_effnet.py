#!/usr/bin/env python
"""EfficientNet-Lite0 in int8 (notebooks 11 and 14): accuracy per variant, the full sensitivity scans, mixed precision
to a budget, CLE and bias correction, kernels, sizes on disk, the AOTInductor package, and latency.

    .venv/bin/python benchmarks/bench_effnet.py                  # everything -> benchmarks/results/effnet.json
    .venv/bin/python benchmarks/bench_effnet.py --smoke          # tiny: 3 rounds, 3 layers, /tmp/effnet-smoke.json
    .venv/bin/python benchmarks/bench_effnet.py --sections latency --redo   # one section again

Sections (each saved to the results file when done; a rerun skips sections already there unless ``--redo``):

* ``accuracy`` -- against fp32 on the evaluation photos (:mod:`qlab.effnet`: top-1 agreement, top-5 overlap,
  KL, logit SQNR, each with its cluster-bootstrap interval over photos): PT2E int8 per channel and per tensor
  (q/dq model), the non-strict export that quantizes no convolution, and the kernels Inductor generates for each.
* ``cle`` -- BN-folded model, bias correction, cross-layer equalization, both; ReLU6->ReLU; int8 per tensor
  and per channel (the correction fitted for the weights it is used with, and once for the wrong ones).
* ``scans`` -- ``qlab.sensitivity.scan`` over all 50 layers: ``only`` and ``skip``, per tensor and per channel,
  with the seconds per step.
* ``mixed`` -- ``qlab.sensitivity.mixed_precision`` (per channel, ranked by the per-channel ``only`` scan) up to
  ``--max-float`` layers in float: every step's measures, bytes, and its compiled model's measures.
* ``deploy`` -- ``torch.export.save``/``load`` (bit-equal), the dead fp32 weights, AOTInductor packages of fp32
  and int8 (built under no_grad with freezing, and once in grad mode: the pitfall), their kernels, packaging
  time, sizes, and a fresh process that imports only torch (bit-equal to ``torch.compile``?).
* ``latency`` -- batch 1, ``--threads`` (1 and 2): fp32 eager, fp32 compiled, int8 per channel and per tensor
  compiled, each mixed-precision step compiled, the AOTI packages; ``qlab.timing.time_interleaved``
  (``--rounds`` >= 15 interleaved rounds), medians with IQR, speedups paired per round.

Refuses a busy machine (1-minute load average above 0.5) unless ``--allow-busy``: then the load is recorded
and the file says the recording is a development one, to be redone on a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import tempfile
import time
import warnings

import torch
from tqdm import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qlab  # noqa: E402
from qlab import _env, cle, deploy, effnet, pt2e, sensitivity  # noqa: E402
from qlab.timing import loadavg, speedups, time_interleaved, wait_for_quiet  # noqa: E402

# Explained in notebooks 00 and 11 and filtered there by message; filtered here so the log stays readable.
for msg in (".*torch.ao.quantization.*deprecated", "Please use quant_min and quant_max",
            ".*quantized tensor creation functions.*deprecated", "To copy construct from a tensor"):
    warnings.filterwarnings("ignore", message=msg)

SECTIONS = ("accuracy", "cle", "scans", "mixed", "deploy", "latency")


class Ctx:
    """What every section needs, built once: the model, the photos, fp32 logits, the strict export."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.model = effnet.load()
        self.x, self.clusters = effnet.eval_set()
        self.calib = effnet.calibration_batches()
        self.ref = effnet.predict(self.model, self.x)
        t0 = time.perf_counter()
        self.ep = pt2e.export_batch_dynamic(self.model, self.x[:2], strict=True)
        self.export_s = time.perf_counter() - t0
        self.example = self.x[:1]
        self._int8 = {}

    def int8(self, weights: str):
        if weights not in self._int8:
            self._int8[weights] = pt2e.pt2e_int8(self.ep, self.calib, pt2e.x86_quantizer(weights=weights))
        return self._int8[weights]

    def measures(self, out: torch.Tensor) -> dict:
        return {k: vars(s) for k, s in effnet.summarize(self.ref, out, self.clusters).items()}


def _kinds(gm) -> dict:
    return dict(collections.Counter(pt2e.weight_kinds(gm).values()))


def _one_by_one(fn, x: torch.Tensor) -> torch.Tensor:
    """A static-shape (batch 1) compiled model over many rows."""
    with torch.no_grad():
        return torch.cat([fn(x[i : i + 1]) for i in range(len(x))])


def section_accuracy(ctx: Ctx) -> dict:
    whole = {n: 5 * i for i, n in enumerate(effnet.EVAL_PHOTOS)}  # eval_set: whole view first, then 4 crops
    probs = ctx.ref.softmax(1)
    out = {"fp32_whole_views": {n: {"class": effnet.class_name(int(probs[i].argmax())), "p": float(probs[i].max())}
                                for n, i in whole.items()}, "variants": {}, "kernels": {}}
    bar = tqdm(total=3, desc="accuracy", unit="variant", dynamic_ncols=True)
    t0 = time.perf_counter()
    nonstrict = pt2e.export_batch_dynamic(ctx.model, ctx.x[:2], strict=False)
    out["export_s"] = {"strict": round(ctx.export_s, 2), "non_strict": round(time.perf_counter() - t0, 2)}
    q = pt2e.pt2e_int8(nonstrict, ctx.calib)
    out["variants"]["int8 per channel, non-strict export"] = ctx.measures(effnet.predict(q, ctx.x)) | {
        "weights": _kinds(q)}
    bar.update()
    for w in ("per_channel",) if ctx.smoke else ("per_channel", "per_tensor"):
        q = ctx.int8(w)
        eager = effnet.predict(q, ctx.x)
        out["variants"][f"int8 {w.replace('_', ' ')}"] = ctx.measures(eager) | {"weights": _kinds(q)}
        compiled, code = pt2e.lower(q, ctx.example, code=True)
        with qlab.scoped(inductor={"freezing": True}):
            lowered = _one_by_one(compiled, ctx.x)
        out["variants"][f"int8 {w.replace('_', ' ')}, compiled"] = ctx.measures(lowered) | {
            "max_abs_diff_vs_qdq": float((lowered - eager).abs().max())}
        out["kernels"][f"int8 {w.replace('_', ' ')}"] = pt2e.kernel_counts(code)
        bar.update()
    _, code = pt2e.lower(ctx.model, ctx.example, code=True)
    out["kernels"]["fp32"] = pt2e.kernel_counts(code)
    bar.close()
    return out


def section_cle(ctx: Ctx) -> dict:
    folded = cle.fold_bn(effnet.plain(ctx.model))
    eq, _ = cle.equalize(folded)
    float_models = {"folded": folded, "ReLU6->ReLU after dw": cle.relu6_to_relu(folded, "dw"), "CLE": eq}
    out = {"float": {}, "int8": {}}
    for name, m in float_models.items():
        out["float"][name] = ctx.measures(effnet.predict(m, ctx.x)) | {
            "max_abs_diff": float((effnet.predict(m, ctx.x) - ctx.ref).abs().max())}
    jobs = []
    for w in ("per_tensor", "per_channel"):
        jobs += [("folded", folded, w), ("bias corrected", cle.bias_correct(folded, ctx.calib, w), w),
                 ("CLE", eq, w), ("CLE + bias corrected", cle.bias_correct(eq, ctx.calib, w), w)]
    other = {"per_tensor": "per_channel", "per_channel": "per_tensor"}
    for w in ("per_tensor", "per_channel"):
        jobs.append((f"bias corrected for {other[w].replace('_', ' ')} weights",
                     cle.bias_correct(folded, ctx.calib, other[w]), w))
    jobs += [("ReLU6->ReLU after dw", float_models["ReLU6->ReLU after dw"], "per_tensor"),
             ("ReLU6->ReLU after dw + CLE", cle.equalize(float_models["ReLU6->ReLU after dw"])[0], "per_tensor")]
    if ctx.smoke:
        jobs = [jobs[0], jobs[3]]
    for name, m, w in tqdm(jobs, desc="cle", unit="variant", dynamic_ncols=True):
        ep = pt2e.export_batch_dynamic(m, ctx.x[:2])
        q = pt2e.pt2e_int8(ep, ctx.calib, pt2e.x86_quantizer(weights=w))
        out["int8"].setdefault(name, {})[w] = ctx.measures(effnet.predict(q, ctx.x)) | {"weights": _kinds(q)}
    return out


def section_scans(ctx: Ctx) -> dict:
    layers = effnet.layer_names(ctx.model)
    if ctx.smoke:
        layers = ["_conv_stem", "_blocks.0._depthwise_conv"]
    out = {}
    for w in ("per_channel",) if ctx.smoke else ("per_channel", "per_tensor"):
        for kind in ("only", "skip"):
            bar = tqdm(total=len(layers), desc=f"scan {kind} {w}", unit="layer", dynamic_ncols=True)
            rows = sensitivity.scan(ctx.ep, ctx.calib, ctx.x, ctx.ref, ctx.clusters, layers, kind, w,
                                    progress=lambda n, b=bar: (b.set_postfix_str(n), b.update()))
            bar.close()
            out[f"{w}/{kind}"] = rows
    return out


def section_mixed(ctx: Ctx, results: dict, max_float: int, budget: float) -> dict:
    scan_rows = results.get("scans", {}).get("per_channel/only")
    if not scan_rows:
        raise SystemExit("the mixed section ranks layers by the per-channel 'only' scan: run --sections scans first")
    ranking = sensitivity.rank(scan_rows, "sqnr_db")
    max_float = min(max_float, len(ranking))
    bar = tqdm(total=max_float + 1, desc="mixed precision", unit="step", dynamic_ncols=True)
    steps = sensitivity.mixed_precision(ctx.ep, ctx.calib, ctx.x, ctx.ref, ctx.clusters, ranking, budget,
                                        max_float=max_float, progress=lambda k: bar.update())
    bar.close()
    rows = []
    for s in tqdm(steps, desc="mixed: compiled accuracy", unit="step", dynamic_ncols=True):
        compiled = pt2e.lower(s.model, ctx.example)
        with qlab.scoped(inductor={"freezing": True}):
            lowered = _one_by_one(compiled, ctx.x)
        rows.append(s.as_dict() | {"compiled": ctx.measures(lowered), "weights": _kinds(s.model)})
    return {"ranking": ranking, "ranked_by": "per_channel/only sqnr_db", "budget_asked": budget, "steps": rows}


def section_deploy(ctx: Ctx, outdir: pathlib.Path) -> dict:
    """Artefacts go to ``outdir`` (outside the repository: packages are built for this machine)."""
    q = ctx.int8("per_channel")
    x = ctx.example
    out = {"unused_fp32_tensors": len(deploy.unused_tensors(q)),
           "state_dict_bytes": sum(v.numel() * v.element_size() for v in q.state_dict().values()),
           "graph_bytes": pt2e.graph_bytes(q), "fp32_state_dict_bytes": pt2e.graph_bytes(ctx.model)}
    programs = {"fp32": deploy.export_static(ctx.model, x), "int8": deploy.export_static(q, x),
                "int8 stripped": deploy.export_static(deploy.strip_unused(q), x)}
    paths, sizes = {}, {}
    for name, ep in programs.items():
        paths[name] = outdir / f"{name.replace(' ', '_')}.pt2"
        sizes[f"export {name}"] = deploy.save(ep, paths[name]) / 1e6
    loaded = deploy.load(paths["int8 stripped"])
    with torch.no_grad():
        out["export_load_bit_equal"] = bool(torch.equal(_one_by_one(loaded.module(), ctx.x),
                                                        _one_by_one(q, ctx.x)))
    out["packaging_s"], out["package_kernels"] = {}, {}
    for name in ("int8 stripped",) if ctx.smoke else ("fp32", "int8 stripped"):
        p = outdir / f"aoti_{name.replace(' ', '_')}.pt2"
        out["packaging_s"][name] = round(deploy.aoti_package(programs[name], p), 1)
        out["package_kernels"][name] = deploy.package_kernels(p)
        sizes[f"AOTI {name}"] = deploy.file_mb(p)
        paths[f"AOTI {name}"] = p
    if not ctx.smoke:  # the pitfall: packaged in grad mode, Inductor's int8 patterns do not match
        p = outdir / "aoti_int8_gradmode.pt2"
        t0 = time.perf_counter()
        with qlab.scoped():
            torch._inductor.aoti_compile_and_package(programs["int8 stripped"], package_path=str(p),
                                                     inductor_configs={"freezing": True})
        out["packaging_s"]["int8 in grad mode"] = round(time.perf_counter() - t0, 1)
        out["package_kernels"]["int8 in grad mode"] = deploy.package_kernels(p)
        sizes["AOTI int8 in grad mode"] = deploy.file_mb(p)
    out["sizes_mb"] = {k: round(v, 2) for k, v in sizes.items()}
    with qlab.scoped(threads=1):
        compiled = pt2e.lower(q, x)
        with qlab.scoped(inductor={"freezing": True}):
            want = _one_by_one(compiled, ctx.x)
        fresh = deploy.run_fresh(paths["AOTI int8 stripped"], ctx.x)
        fresh_export = deploy.run_fresh(paths["int8 stripped"], ctx.x, kind="export")
    out["fresh_process"] = {"threads": fresh["threads"], "imported": fresh["imported"],
                            "aoti_load_s": round(fresh["load_s"], 2),
                            "aoti_bit_equal_to_compile": bool(torch.equal(fresh["outputs"], want)),
                            "aoti_max_abs_diff_to_compile": float((fresh["outputs"] - want).abs().max()),
                            "export_bit_equal_to_qdq": bool(torch.equal(fresh_export["outputs"],
                                                                        _one_by_one(q, ctx.x))),
                            "export_with_torch_alone": fresh_export["bare_error"],
                            "export_imported": fresh_export["imported"],
                            "aoti": ctx.measures(fresh["outputs"])}
    return out


def section_latency(ctx: Ctx, results: dict, threads: list[int], rounds: int, outdir: pathlib.Path) -> dict:
    mixed = results.get("mixed", {}).get("steps", [])
    paths = {f"AOTI {n}": outdir / f"aoti_{n.replace(' ', '_')}.pt2" for n in ("fp32", "int8 stripped")}
    paths = {k: p for k, p in paths.items() if p.exists()}
    if not paths:
        print(f"latency: no AOTI packages in {outdir}: run --sections deploy first to time them too")
    out = {}
    for th in threads:
        torch._dynamo.reset()  # a fresh compile per thread count: Inductor's C++ bakes the thread count in
        with qlab.scoped(threads=th):
            x = ctx.example
            cands = {"fp32 eager": ctx.model}
            bar = tqdm(total=3 + len(mixed), desc=f"latency ({th} thr): compiling", unit="model", dynamic_ncols=True)
            cands["fp32 compiled"] = pt2e.lower(ctx.model, x)
            bar.update()
            for w in ("per_channel",) if ctx.smoke else ("per_channel", "per_tensor"):
                cands[f"int8 {w.replace('_', ' ')} compiled"] = pt2e.lower(ctx.int8(w), x)
                bar.update()
            for k, step in enumerate(mixed[1:], 1):
                q = pt2e.pt2e_int8(ctx.ep, ctx.calib, pt2e.x86_quantizer(float_layers=step["float_layers"]))
                cands[f"mixed: {k} float"] = pt2e.lower(q, x)
                bar.update()
            bar.close()
            for name in ("fp32", "int8 stripped"):
                if f"AOTI {name}" in paths:
                    cands[f"AOTI {name.split()[0]}"] = deploy.aoti_load(paths[f"AOTI {name}"])
            with qlab.scoped(inductor={"freezing": True}):
                t = time_interleaved({n: (lambda m=m, x=x: m(x)) for n, m in cands.items()}, rounds=rounds)
            sp = speedups(t, "fp32 eager")
            spc = speedups(t, "fp32 compiled")
            out[str(th)] = {"rounds": rounds, "load": list(t.load), "variants": {
                n: v.as_dict() | {"speedup_vs_fp32_eager": round(sp[n], 3),
                                  "speedup_vs_fp32_compiled": round(spc[n], 3)} for n, v in t.items()}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--redo", action="store_true", help="recompute sections already in the results file")
    ap.add_argument("--rounds", type=int, default=21, help="interleaved timing rounds (at least 15)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-float", type=int, default=8, help="mixed precision: at most this many float layers")
    ap.add_argument("--budget", type=float, default=40.0, help="mixed precision: SQNR budget in dB (the path "
                    "stops when the interval's low end reaches it)")
    ap.add_argument("--smoke", action="store_true", help="tiny run (3 rounds, 2 layers, 1 thread, per channel "
                    "only) to /tmp/effnet-smoke.json")
    ap.add_argument("--allow-busy", action="store_true", help="record on a busy machine (a development recording)")
    ap.add_argument("--wait", type=float, default=600, help="seconds to wait for the load average to drop")
    ap.add_argument("--out", type=pathlib.Path, default=None)
    ap.add_argument("--artefacts", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "qlab-effnet",
                    help="where the saved programs and AOTI packages go (built for this machine; not committed)")
    args = ap.parse_args()
    out_path = args.out or (pathlib.Path("/tmp/effnet-smoke.json") if args.smoke
                            else ROOT / "benchmarks" / "results" / "effnet.json")
    rounds = 3 if args.smoke else args.rounds
    if args.smoke:
        args.redo, args.max_float, args.threads = True, min(args.max_float, 1), args.threads[:1]
        args.artefacts = args.artefacts.with_name(args.artefacts.name + "-smoke")
    if rounds < 15 and not args.smoke:
        ap.error("--rounds must be at least 15 (the interquartile range needs them)")
    qlab.setup(threads=args.threads[0], quiet=True)
    load_before = loadavg() if args.allow_busy else wait_for_quiet(0.5, args.wait)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    if results and results.get("meta", {}).get("cpu") != _env.machine_info()["cpu"] and not args.redo:
        raise SystemExit(f"{out_path} was recorded on another CPU: use --out or --redo")
    meta = results.get("meta", {}) | _env.machine_info() | {
        "loadavg_before": load_before, "allow_busy": args.allow_busy, "smoke": args.smoke,
        "command": "python benchmarks/bench_effnet.py " + " ".join(sys.argv[1:]),
        "protocol": {"eval_photos": effnet.EVAL_PHOTOS, "calib_photos": list(effnet.CALIB_PHOTOS),
                     "eval_views": "whole + 4 crops each", "calib_views": "whole + 1 crop each, batches of 8"}}
    if args.allow_busy:
        meta["note"] = ("development recording on a shared machine (--allow-busy): timings include other "
                        "processes' load; re-record on a quiet machine")
    t0 = time.perf_counter()
    ctx = Ctx(args.smoke)
    runs = meta.setdefault("sections_s", {})
    args.artefacts.mkdir(parents=True, exist_ok=True)
    for name in SECTIONS:
        if name not in args.sections:
            continue
        if name in results and not args.redo:
            print(f"{name}: in {out_path} already (--redo to recompute)")
            continue
        s0, load0 = time.perf_counter(), loadavg()
        if name == "accuracy":
            results[name] = section_accuracy(ctx)
        elif name == "cle":
            results[name] = section_cle(ctx)
        elif name == "scans":
            results[name] = section_scans(ctx)
        elif name == "mixed":
            results[name] = section_mixed(ctx, results, args.max_float, args.budget)
        elif name == "deploy":
            results[name] = section_deploy(ctx, args.artefacts)
        else:
            results[name] = section_latency(ctx, results, args.threads, rounds, args.artefacts)
        runs[name] = round(time.perf_counter() - s0, 1)
        meta["loadavg_after"] = loadavg()
        # sections may be recorded in different runs: each keeps its own load and command
        meta.setdefault("sections_load", {})[name] = {"before": load0, "after": meta["loadavg_after"],
                                                      "allow_busy": args.allow_busy, "command": meta["command"],
                                                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        results["meta"] = meta
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: done in {runs[name]:.0f} s, saved to {out_path}", flush=True)
    meta["wall_s_last_run"] = round(time.perf_counter() - t0, 1)
    out_path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
