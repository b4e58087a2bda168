#!/usr/bin/env python
"""INT8 vs FP32 latency of whole models on this CPU, per quantization path (notebook 07).

    .venv/bin/python benchmarks/bench_models.py                 # the full study (~30-40 min on 2 cores)
    .venv/bin/python benchmarks/bench_models.py --quick         # smoke test: 2 models, batch 1, few repeats
    .venv/bin/python benchmarks/bench_models.py --models resnet18 --batches 1,16
    .venv/bin/python benchmarks/bench_models.py --list          # models and paths

A workbook-scale version of the "x86 quantization backend" study (69 models, 4th-gen
Xeon): timm models built with random weights (no downloads) plus the workbook's
DigitsCNN, at batch 1 and a larger batch, on these paths:

    fp32           fp32 eager (the baseline every ratio divides)
    eager_x86      eager-mode PTQ (stubs + fuse_modules + prepare/convert), engine x86
    eager_fbgemm   the same with engine fbgemm
    fx_x86         FX graph mode PTQ (prepare_fx/convert_fx, x86 qconfig + backend config), engine x86
    fx_fbgemm      the same with the fbgemm qconfig/backend config, engine fbgemm
    pt2e_inductor  torch.export + X86InductorQuantizer + convert_pt2e, torch.compile with freezing
    pt2e_nofreeze  the same compiled without freezing (on a few models: the slow case)
    fp32_inductor  fp32 torch.compile with freezing
    qlab_vit       qlab's int8 ViT (ViTs only): qlab.vit.quantize_vit, linears and attention matmuls on qlab.kernels

True eager mode needs QuantStub/DeQuantStub, fusion lists and FloatFunctional for
every residual add written into the model's code; timm models have none, so the
eager paths run on DigitsCNN (written for it) and are recorded as skipped for timm
models: fx_x86/fx_fbgemm run the same quantized kernels under each engine there.

For each (model, batch) all paths are timed **interleaved** (qlab.timing.time_interleaved, 15 rounds)
together with fp32 eager, so every ratio compares timings taken in the same minutes.
Results go to benchmarks/results/models.json with the machine (CPU, ISA, torch,
threads). The run is **resumable**: (model, path, batch) triples already in the file
are skipped (``--retry-failed`` re-runs failures; quick results never count for a full run).
Then a sweep of a single Linear (over batch rows, and over width at batch 1) and a Conv2d
(over image size) finds where int8 starts to beat fp32.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import pathlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from qlab import _env, checkpoints, flows  # noqa: E402
from qlab import pt2e as qpt2e  # noqa: E402
from qlab.timing import loadavg, time_interleaved, wait_for_quiet  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "models.json"

# The deprecations the notebooks show and explain (05, 06); a benchmark log does not need them.
# Any other warning a path raises is recorded with its result ("warnings").
_IGNORED = (
    ".*torch.ao.quantization.*deprecated",
    "Please use quant_min and quant_max",
    ".*quantized tensor creation functions.*deprecated",
    ".*treespec.children_specs.*deprecated",
    "To copy construct from a tensor",
)
for _msg in _IGNORED:
    warnings.filterwarnings("ignore", message=_msg)
# FX's quantized DeiT warns on every call; it is recorded once, with the result, and not repeated in the log.
warnings.filterwarnings("ignore", message="All inputs of this cat operator must share the same quantization")


# --------------------------------------------------------------------------- models
@dataclass
class ModelSpec:
    name: str
    family: str  # "cnn" or "vit"
    input_shape: tuple[int, ...]  # one sample
    eager_ready: bool = False  # has stubs + fuse_spec (eager-mode quantization works)
    nofreeze_demo: bool = False  # also time PT2E compiled without freezing


MODELS = {
    "digits_cnn": ModelSpec("digits_cnn", "cnn", (1, 16, 16), eager_ready=True, nofreeze_demo=True),
    "resnet18": ModelSpec("resnet18", "cnn", (3, 224, 224), nofreeze_demo=True),
    "mobilenetv3_large_100": ModelSpec("mobilenetv3_large_100", "cnn", (3, 224, 224)),
    "efficientnet_b0": ModelSpec("efficientnet_b0", "cnn", (3, 224, 224)),
    "convnext_atto": ModelSpec("convnext_atto", "cnn", (3, 224, 224)),
    "deit_tiny_patch16_224": ModelSpec("deit_tiny_patch16_224", "vit", (3, 224, 224)),
    "deit_small_patch16_224": ModelSpec("deit_small_patch16_224", "vit", (3, 224, 224)),
}
DEFAULT_MODELS = [
    "digits_cnn",
    "resnet18",
    "mobilenetv3_large_100",
    "convnext_atto",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
]
DEFAULT_BATCHES = [1, 16]
QUICK_MODELS = ["digits_cnn", "resnet18"]


def build_model(spec: ModelSpec) -> torch.nn.Module:
    if spec.name == "digits_cnn":
        return checkpoints.load("digits_cnn")
    import timm

    with _env.scoped(seed=0):  # random weights, but the same ones on every run (notebook 07 rebuilds ResNet-18)
        return timm.create_model(spec.name, pretrained=False).eval()


def calibration_data(spec: ModelSpec) -> list[torch.Tensor]:
    if spec.name == "digits_cnn":
        from qlab.data import calibration_batches

        return calibration_batches(128, size=16, batch_size=32)
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, *spec.input_shape, generator=g) for _ in range(2)]


def timing_input(spec: ModelSpec, batch: int) -> torch.Tensor:
    if spec.name == "digits_cnn":
        from qlab.data import digits

        x = digits("test", 16).tensors[0]
        return x[:batch].clone()
    g = torch.Generator().manual_seed(2)
    return torch.randn(batch, *spec.input_shape, generator=g)


# --------------------------------------------------------------------------- paths
class NotAvailable(Exception):
    """The path does not apply to this model or this tree; recorded as 'skipped' with the reason."""


@dataclass
class ModelCtx:
    spec: ModelSpec
    model: torch.nn.Module
    calib: list[torch.Tensor]
    fp32_bytes: int
    cache: dict = field(default_factory=dict)


@dataclass
class Built:
    fn: Callable[[torch.Tensor], torch.Tensor]
    nbytes: int | None
    build_s: float
    notes: str = ""


def _eager_ptq(ctx: ModelCtx, engine: str) -> flows.OnEngine:
    if not ctx.spec.eager_ready:
        raise NotAvailable(
            "eager mode needs QuantStub/DeQuantStub, a fusion list and FloatFunctional adds written into the "
            "model; timm models have none (fx_x86/fx_fbgemm run the same int8 kernels under each engine)"
        )
    return flows.ptq(ctx.model, ctx.calib, engine)  # the flow of notebook 03


def _fx_ptq(ctx: ModelCtx, engine: str) -> flows.OnEngine:
    key = ("fx", engine)
    if key not in ctx.cache:
        ctx.cache[key] = flows.fx_ptq(ctx.model, ctx.calib, engine)  # the flow of notebook 05; runs under engine
    return ctx.cache[key]


def _pt2e_converted(ctx: ModelCtx):
    if "pt2e" not in ctx.cache:
        ctx.cache["pt2e"] = qpt2e.pt2e_int8(ctx.model, ctx.calib)  # X86InductorQuantizer, batch dynamic
    return ctx.cache["pt2e"]


def build_path(path: str, ctx: ModelCtx, x: torch.Tensor) -> Built:
    t0 = time.perf_counter()
    spec = ctx.spec
    if path == "fp32":
        return Built(ctx.model, ctx.fp32_bytes, 0.0)
    if path in ("eager_x86", "eager_fbgemm"):
        engine = path.split("_")[1]
        m = _eager_ptq(ctx, engine)
        return Built(m, qpt2e.graph_bytes(m.model), time.perf_counter() - t0)
    if path in ("fx_x86", "fx_fbgemm"):
        engine = path.split("_")[1]
        m = _fx_ptq(ctx, engine)
        return Built(m, qpt2e.graph_bytes(m.model), time.perf_counter() - t0)
    if path in ("pt2e_inductor", "pt2e_nofreeze"):
        freezing = path == "pt2e_inductor"
        if not freezing and not spec.nofreeze_demo:
            raise NotAvailable("pt2e_nofreeze runs on the demo models only")
        c = _pt2e_converted(ctx)
        compiled = qpt2e.lower(c, x, freezing=freezing)
        return Built(compiled, qpt2e.graph_bytes(c), time.perf_counter() - t0, f"freezing={freezing}")
    if path == "fp32_inductor":
        compiled = qpt2e.lower(ctx.model, x, freezing=True)
        return Built(compiled, ctx.fp32_bytes, time.perf_counter() - t0, "freezing=True")
    if path == "qlab_vit":
        if spec.family != "vit":
            raise NotAvailable("qlab_vit applies to ViTs only")
        try:
            vit = importlib.import_module("qlab.vit")
            kernels = importlib.import_module("qlab.kernels")
        except ModuleNotFoundError as e:
            raise NotAvailable(f"{e.name} (qlab's int8 ViT, issue 5) is not in this tree") from None
        # linears and both attention matmuls, as first built (as recorded)
        m = vit.quantize_vit(ctx.model, ctx.calib, softmax="torch", gelu="float", prob_scale="fixed")
        notes = f"qlab.kernels backend={kernels.backend()} isa={kernels.isa()}"
        return Built(m, qpt2e.graph_bytes(m), time.perf_counter() - t0, notes)
    raise ValueError(f"path must be one of {PATHS}, got {path!r}")


PATHS = [
    "fp32",
    "eager_x86",
    "eager_fbgemm",
    "fx_x86",
    "fx_fbgemm",
    "pt2e_inductor",
    "pt2e_nofreeze",
    "fp32_inductor",
    "qlab_vit",
]


def applies(path: str, spec: ModelSpec) -> bool:
    """Paths that make no sense for a model are not recorded at all (the others are, even when skipped)."""
    if path == "pt2e_nofreeze":
        return spec.nofreeze_demo
    if path == "qlab_vit":
        return spec.family == "vit"
    return True


# --------------------------------------------------------------------------- agreement
@torch.no_grad()
def agreement(ref: torch.Tensor, out: torch.Tensor) -> dict:
    """How close a path's logits are to fp32's: cosine similarity, SQNR (dB), top-1 match rate."""
    ref, out = ref.float().flatten(1), out.float().flatten(1)
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0).item()
    noise = (ref - out).pow(2).sum().item()
    sqnr = float("inf") if noise == 0 else 10 * torch.log10(ref.pow(2).sum() / noise).item()
    top1 = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    return {"cosine": round(cos, 6), "sqnr_db": round(sqnr, 2), "top1_match": round(top1, 4)}


@torch.no_grad()
def digits_accuracy(fn, batch: int) -> float:
    """Top-1 accuracy on the digits test split, in batches of ``batch`` (the compiled shape; remainder dropped)."""
    from qlab.data import digits

    x, y = digits("test", 16).tensors
    n = (len(y) // batch) * batch
    correct = sum(int((fn(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, n, batch))
    return round(correct / n, 6)


# --------------------------------------------------------------------------- results file
def load(out: pathlib.Path) -> dict:
    if out.exists():
        return json.loads(out.read_text())
    return {"schema": 1, "machine": None, "runs": [], "records": [], "sweep": []}


def save(data: dict, out: pathlib.Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out)  # atomic: an interrupted run never leaves half a file


def _same_machine(a: dict, b: dict) -> bool:
    keys = ("cpu", "isa", "torch", "torchao", "threads")
    return all(a.get(k) == b.get(k) for k in keys)


def done_keys(data: dict, quick: bool, retry_failed: bool) -> set:
    keys = set()
    for r in data["records"]:
        if r.get("quick") and not quick:
            continue  # quick numbers never stand in for a full run
        if r["status"] == "failed" and retry_failed:
            continue
        keys.add((r["model"], r["path"], r["batch"]))
    return keys


def upsert(data: dict, rec: dict) -> None:
    key = (rec["model"], rec["path"], rec["batch"])
    data["records"] = [r for r in data["records"] if (r["model"], r["path"], r["batch"]) != key] + [rec]


# --------------------------------------------------------------------------- the model study
def run_models(args, data, out, run_id) -> None:
    done = done_keys(data, args.quick, args.retry_failed)
    work = []
    for name in args.models:
        spec = MODELS[name]
        for b in args.batches:
            todo = [p for p in args.paths if applies(p, spec) and (name, p, b) not in done]
            if todo:
                work.append((spec, b, todo))
    if not work:
        print("models: every (model, path, batch) is already in", out.relative_to(ROOT))
        return
    n_items = sum(len(t) for _, _, t in work)
    bar = tqdm(total=n_items, desc="models", unit="result", dynamic_ncols=True)
    current = None
    ctx = None
    for spec, batch, todo in work:
        if current != spec.name:
            torch._dynamo.reset()
            bar.set_postfix_str(f"{spec.name}: building")
            model = build_model(spec)
            ctx = ModelCtx(spec, model, calibration_data(spec), qpt2e.graph_bytes(model))
            current = spec.name
        x = timing_input(spec, batch)
        with torch.no_grad():
            ref = ctx.model(x)
        built, records = {}, {}
        for path in ["fp32"] + [p for p in todo if p != "fp32"]:
            bar.set_postfix_str(f"{spec.name} b{batch}: {path}")
            base = {
                "model": spec.name,
                "family": spec.family,
                "path": path,
                "batch": batch,
                "input": [batch, *spec.input_shape],
                "run": run_id,
                "quick": args.quick,
            }
            try:
                with warnings.catch_warnings(record=True) as caught:  # what a path warns about is data too
                    warnings.simplefilter("always")
                    for msg in _IGNORED:
                        warnings.filterwarnings("ignore", message=msg)
                    b = build_path(path, ctx, x)
                    with torch.no_grad():
                        y = b.fn(x)
                said = sorted({str(w.message).splitlines()[0][:200] for w in caught})
                rec = dict(
                    base,
                    status="ok",
                    build_s=round(b.build_s, 1),
                    notes=b.notes,
                    warnings=said,
                    bytes=b.nbytes,
                    fp32_bytes=ctx.fp32_bytes,
                    agreement=agreement(ref, y),
                )
                if spec.name == "digits_cnn":
                    rec["accuracy"] = digits_accuracy(b.fn, batch)
                built[path] = b
            except NotAvailable as e:
                rec = dict(base, status="skipped", reason=str(e))
            except Exception as e:  # a path that breaks on one model must not stop the study
                first = (str(e).strip().splitlines() or [""])[0][:300]
                rec = dict(base, status="failed", reason=f"{type(e).__name__}: {first}")
            records[path] = rec
        timings = time_interleaved(
            {p: (lambda f=b.fn, x=x: f(x)) for p, b in built.items()},
            rounds=args.rounds,
            target_s=args.target_s,
            max_number=20,
        )
        fp32_ms = timings["fp32"].median
        for path, rec in records.items():
            if path not in todo:
                continue  # fp32 re-timed as the baseline of this run; its earlier record stays
            if rec["status"] == "ok":
                t = timings[path]
                lo, hi = t.iqr
                rec.update(
                    ms=round(t.median, 4),
                    iqr_ms=[round(lo, 4), round(hi, 4)],
                    samples=len(t.samples),
                    fp32_ms=round(fp32_ms, 4),
                    speedup=round(fp32_ms / t.median, 4),
                )
                msg = f"{spec.name:24s} b{batch:<3d} {path:14s} {t.median:9.2f} ms  x{fp32_ms / t.median:5.2f} vs fp32"
            else:
                msg = f"{spec.name:24s} b{batch:<3d} {path:14s} {rec['status']}: {rec['reason'][:90]}"
            tqdm.write(msg)
            upsert(data, rec)
            bar.update(1)
        save(data, out)
        del built
    bar.close()


# --------------------------------------------------------------------------- the layer sweep
class _Linear(torch.nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.layer = torch.nn.Linear(k, n)

    def forward(self, x):
        return self.layer(x)


class _Conv(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.layer(x)


LINEAR_K = LINEAR_N = 512
CONV_C = 64


def sweep_points(quick: bool) -> list[tuple[str, int]]:
    rows = [1, 4, 16, 64, 256] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    widths = [16, 128, 1024] if quick else [16, 32, 64, 128, 256, 512, 1024]
    sizes = [4, 14, 56] if quick else [2, 4, 7, 14, 28, 56]
    return [("linear", r) for r in rows] + [("linear_width", w) for w in widths] + [("conv", s) for s in sizes]


def run_sweep(args, data, out, run_id) -> None:
    """fp32 layer vs the FX x86 int8 layer (float in, float out) vs the int8 kernel alone."""
    have = {(r["layer"], r["x"]) for r in data.get("sweep", []) if args.quick or not r.get("quick")}
    points = [p for p in sweep_points(args.quick) if p not in have]
    if not points:
        print("sweep: every point is already in", out.relative_to(ROOT))
        return
    g = torch.Generator().manual_seed(3)
    for layer, xval in tqdm(points, desc="sweep", unit="point", dynamic_ncols=True):
        if layer == "linear":
            m = _Linear(LINEAR_K, LINEAR_N).eval()
            x = torch.randn(xval, LINEAR_K, generator=g)
            meta = {
                "xlabel": "rows (batch x tokens)",
                "title": f"Linear {LINEAR_K}->{LINEAR_N}",
                "macs": xval * LINEAR_K * LINEAR_N,
            }
        elif layer == "linear_width":
            m = _Linear(xval, xval).eval()
            x = torch.randn(1, xval, generator=g)
            meta = {"xlabel": "features in = out, 1 row", "title": "Linear n->n, batch 1", "macs": xval * xval}
        else:
            m = _Conv(CONV_C).eval()
            x = torch.randn(1, CONV_C, xval, xval, generator=g)
            meta = {
                "xlabel": "image side (pixels), batch 1",
                "title": f"Conv2d {CONV_C}->{CONV_C} 3x3",
                "macs": xval * xval * CONV_C * CONV_C * 9,
            }
        q = flows.fx_ptq(m, [x], "x86")  # calls run under the x86 engine
        qlayer = q.model.layer
        scale, zp = float(q.model.layer_input_scale_0), int(q.model.layer_input_zero_point_0)
        xq = torch.quantize_per_tensor(x, scale, zp, torch.quint8)
        kernel = flows.OnEngine(qlayer, "x86")
        t = time_interleaved(
            {"fp32": lambda m=m, x=x: m(x), "int8": lambda q=q, x=x: q(x), "int8_op": lambda f=kernel, xq=xq: f(xq)},
            rounds=args.rounds,
            target_s=args.target_s / 2,
            max_number=200,
        )
        with torch.no_grad():
            agree = agreement(m(x), q(x))
        row = dict(
            layer=layer,
            x=xval,
            **meta,
            fp32_ms=round(t["fp32"].median, 5),
            int8_ms=round(t["int8"].median, 5),
            int8_op_ms=round(t["int8_op"].median, 5),
            cosine=agree["cosine"],
            engine="x86",
            run=run_id,
            quick=args.quick,
        )
        data["sweep"] = [r for r in data.get("sweep", []) if (r["layer"], r["x"]) != (layer, xval)] + [row]
        tqdm.write(
            f"{layer:6s} {xval:4d}: fp32 {row['fp32_ms']:.4f} ms, int8 {row['int8_ms']:.4f} ms "
            f"(x{row['fp32_ms'] / row['int8_ms']:.2f}), kernel alone x{row['fp32_ms'] / row['int8_op_ms']:.2f}"
        )
        save(data, out)


# --------------------------------------------------------------------------- main
def _csv(kind, allowed=None):
    def parse(s):
        vals = [v.strip() for v in s.split(",") if v.strip()]
        if kind is int:
            try:
                vals = [int(v) for v in vals]
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
            if any(v < 1 for v in vals):
                raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {s!r}")
        elif allowed is not None:
            bad = [v for v in vals if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
        if not vals:
            raise argparse.ArgumentTypeError("expected at least one value")
        return vals

    return parse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument("--models", type=_csv(str, list(MODELS)), help=f"default: {','.join(DEFAULT_MODELS)}")
    ap.add_argument("--batches", type=_csv(int), help=f"default: {','.join(map(str, DEFAULT_BATCHES))}")
    ap.add_argument("--paths", type=_csv(str, PATHS), default=PATHS, help="default: all")
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: digits_cnn and resnet18, batch 1, 2 rounds, short sweep"
    )
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help="results file (default: %(default)s)")
    ap.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads (default: %(default)s)"
    )
    ap.add_argument("--rounds", type=int, help="interleaved timing rounds (default 5, quick 2)")
    ap.add_argument(
        "--target-s", type=float, default=0.3, help="seconds per candidate per round (default: %(default)s)"
    )
    ap.add_argument("--no-sweep", action="store_true", help="skip the Linear/Conv crossover sweep")
    ap.add_argument("--sweep-only", action="store_true", help="run only the sweep")
    ap.add_argument(
        "--retry-failed", action="store_true", help="re-run (model, path, batch) triples recorded as failed"
    )
    ap.add_argument("--force", action="store_true", help="append to a results file recorded on another machine/setup")
    ap.add_argument("--list", action="store_true", help="list models and paths, then exit")
    ap.add_argument(
        "--allow-busy", action="store_true", help="record even if the load average is above 0.5 (it is recorded)"
    )
    args = ap.parse_args(argv)

    if args.list:
        for n, s in MODELS.items():
            print(f"{n:24s} {s.family:4s} input {s.input_shape}{'  (default)' if n in DEFAULT_MODELS else ''}")
        print("paths:", ", ".join(PATHS))
        return 0
    args.models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    args.batches = args.batches or ([1] if args.quick else DEFAULT_BATCHES)
    args.rounds = args.rounds or (2 if args.quick else 15)
    if args.threads < 1:
        ap.error("--threads must be positive")

    # one thread count, one seed, and the Inductor flag its int8 kernels need (frozen, constant weights)
    with _env.scoped(threads=args.threads, seed=0, inductor={"freezing": True}):
        return record(args, argv)


def record(args, argv) -> int:
    """Run the study into ``args.out`` (under the caller's :func:`qlab.scoped` settings)."""
    _env.drop_log_message("torch.utils.cpp_extension", "No CUDA runtime is found")  # CUDA build, no GPU
    if not (args.quick or args.allow_busy):
        print(f"waiting for a quiet machine (load average {loadavg():.2f}; at most 0.5) ...")
        wait_for_quiet(0.5)

    out = args.out if args.out.is_absolute() else (pathlib.Path.cwd() / args.out)
    data = load(out)
    machine = _env.machine_info()
    if data["machine"] and not _same_machine(data["machine"], machine) and not args.force:
        print(
            f"{out} was recorded on another machine or set-up:\n  {data['machine']}\nthis one:\n  {machine}\n"
            "use another --out, or --force to mix them",
            file=sys.stderr,
        )
        return 2
    data["machine"] = machine
    run_id = len(data["runs"]) + 1
    data["runs"].append(
        {
            "id": run_id,
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([pathlib.Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
            "machine": machine,
            "load_before": round(loadavg(), 2),
        }
    )
    print(
        f"{machine['cpu']} | ISA {' '.join(machine['isa'])} | torch {machine['torch']} | threads {machine['threads']}"
    )
    t0 = time.perf_counter()
    if not args.sweep_only:
        run_models(args, data, out, run_id)
    if not args.no_sweep:
        run_sweep(args, data, out, run_id)
    data["runs"][-1]["seconds"] = round(time.perf_counter() - t0, 1)
    data["runs"][-1]["load_after"] = round(loadavg(), 2)
    save(data, out)
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
