"""Exercises of ``notebooks/07-*.ipynb`` (x86 performance); reference answers in ``notebooks/solutions/07-*.py``."""

from __future__ import annotations

import torch

from .._env import scoped
from ._core import _call, _close, _letter_set, _pair, exercise

# the checkers register themselves with @exercise; the names below are what a notebook prints or uses
__all__ = ["SWEEP_CASES_07"]


def _int8_linear_tensors(n_in: int, n_out: int) -> dict[str, torch.Tensor]:
    """The tensors of an nn.Linear(n_in, n_out) quantized with the x86 defaults (eager convert, the same
    QuantizedLinear FX produces): int8 codes, per-channel scales and zero points, bias."""
    import torch.ao.quantization as tq

    with scoped(engine="x86", seed=0):
        model = torch.nn.Sequential(tq.QuantStub(), torch.nn.Linear(n_in, n_out), tq.DeQuantStub()).eval()
        model.qconfig = tq.get_default_qconfig("x86")
        tq.prepare(model, inplace=True)
        with torch.no_grad():
            model(torch.randn(4, n_in))
        tq.convert(model, inplace=True)
    w, b = model[1].weight(), model[1].bias()
    return {
        "codes": w.int_repr(),
        "scales": w.q_per_channel_scales(),
        "zero_points": w.q_per_channel_zero_points(),
        "bias": b,
    }


@exercise("07.1", "bytes of the weight and bias tensors of an int8 nn.Linear(n_in, n_out)")
def _check_07_1(fn) -> list[str]:
    if not callable(fn):
        return ["answer with a function int8_linear_bytes(n_in, n_out) -> int"]
    for n_in, n_out in [(64, 10), (512, 1000), (3, 7)]:
        t = _int8_linear_tensors(n_in, n_out)
        ref = sum(v.numel() * v.element_size() for v in t.values())
        got, err = _call(fn, n_in, n_out)
        if err:
            return [err]
        try:
            got = float(got)
        except Exception:
            return [f"return a number of bytes; for ({n_in}, {n_out}) you returned {got!r}"]
        if got == ref:
            continue
        codes = n_in * n_out  # one byte per weight
        b = t["bias"].element_size()
        s, z = t["scales"].element_size(), t["zero_points"].element_size()
        case = f"for Linear({n_in}, {n_out})"
        hints = [
            (
                codes,
                "you counted only the int8 weight codes: the bias and one scale and one zero point per output "
                "channel come on top",
            ),
            (4 * n_out * (n_in + 1), "that is the fp32 size (4 bytes per weight and bias), not the int8 one"),
            (4 * n_in * n_out, "that is the fp32 weight, not the int8 one"),
            (
                codes + n_out * (b + 4 + 4),
                f"the per-channel scales are {t['scales'].dtype} and the zero points "
                f"{t['zero_points'].dtype}, {s} and {z} bytes each: look at "
                "weight().q_per_channel_scales().dtype",
            ),
            (
                codes + n_out * b + s + z,
                "the weight is quantized per channel: one scale and one zero point per output "
                f"channel ({n_out} of each), not one for the whole tensor",
            ),
            (
                codes + n_out * b + n_in * (s + z),
                "per-channel scales run along axis 0 of the weight [out, in], the "
                f"output channels: {n_out} of them, not {n_in}",
            ),
            (
                codes + n_out * (s + z),
                f"add the bias: a quantized Linear keeps it in {t['bias'].dtype} ({b} bytes per output)",
            ),
            (
                codes + n_out * (1 + s + z),
                f"the bias is not quantized: it stays {t['bias'].dtype}, {b} bytes per output",
            ),
        ]
        hint = next((msg for value, msg in hints if got == value), None)
        if hint:
            return [f"{case}: {hint}"]
        return [
            f"{case}: int8 codes {codes} B + bias {n_out} x {b} B + scales {n_out} x {s} B + zero points "
            f"{n_out} x {z} B; you gave {got:g}"
        ]
    return []


#: 07.2: register widths in bits (AVX-VNNI: the VEX-encoded vpdpbusd of Alder Lake and later, on ymm registers).
_YMM_BITS = 256


@exercise("07.2", "int8 multiply-adds per AVX-VNNI vpdpbusd on ymm, and the ratio to an fp32 FMA of the same width")
def _check_07_2(answer) -> list[str]:
    (macs, ratio), bad = _pair(answer, "(int8 multiply-adds per instruction, ratio to fp32)")
    if bad:
        return [bad]
    # vpdpbusd: per 32-bit lane, 4 u8 x s8 products added into the int32 accumulator -> one multiply-add per byte;
    # vfmadd231ps: one multiply-add per 32-bit float.
    ref_macs, fp32_macs = _YMM_BITS // 8, _YMM_BITS // 32
    problems = []
    if macs != ref_macs:
        if macs == 512 // 8:
            problems.append("64 is the zmm (512-bit) count of AVX-512 VNNI; AVX-VNNI works on 256-bit ymm registers")
        elif macs == _YMM_BITS // 32:
            problems.append(
                f"{_YMM_BITS // 32} is the number of int32 accumulators in a ymm register; vpdpbusd adds "
                "four u8 x s8 products into each"
            )
        elif abs(macs - (_YMM_BITS // 8) / 3) < 0.1:
            problems.append(
                "that is AVX2's three-instruction sequence (vpmaddubsw + vpmaddwd + vpaddd); vpdpbusd does "
                "the products and the accumulation in one instruction"
            )
        else:
            problems.append(f"one multiply-add per byte of the register: {_YMM_BITS} bits / 8; you gave {macs:g}")
    if not _close(ratio, ref_macs / fp32_macs, 1e-3):
        if _close(ratio, ref_macs / (512 // 32), 1e-3) or _close(ratio, (512 // 8) / fp32_macs, 1e-3):
            problems.append(
                "compare at the same width: the fp32 FMA on a ymm register (vfmadd231ps ymm) does "
                f"{fp32_macs} multiply-adds"
            )
        elif _close(ratio, macs / fp32_macs, 1e-3):
            pass  # follows from a wrong count, already explained
        else:
            problems.append(
                f"the ratio is int8 multiply-adds / fp32 multiply-adds per instruction, with "
                f"vfmadd231ps ymm doing {_YMM_BITS} / 32 = {fp32_macs}; you gave {ratio:g}"
            )
    return problems


#: 07.3: layers at batch 1, each a point of the recorded sweep (``benchmarks/results/models.json``).
SWEEP_CASES_07 = {
    "a": ("linear_width", 64, "a Linear(64, 64) head called on one row"),
    "b": ("linear_width", 1024, "a Linear(1024, 1024) called on one row"),
    "c": ("linear", 128, "a Linear(512, 512) of a transformer called on the 128 tokens of one image"),
    "d": ("conv", 4, "a Conv2d(64, 64, 3) on a 4x4 feature map"),
    "e": ("conv", 28, "a Conv2d(64, 64, 3) on a 28x28 feature map"),
    "f": ("linear_width", 256, "a Linear(256, 256) called on one row"),
}


def _sweep_07() -> dict[str, dict]:
    """Letter -> the recorded sweep row of that layer, with its crossover."""
    from ..perf import crossover, load_results

    rows = load_results()["sweep"]
    out = {}
    for letter, (layer, x, _) in SWEEP_CASES_07.items():
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["x"])
        row = next((r for r in mine if r["x"] == x), None)
        if row is None:
            raise LookupError(f"the recorded sweep has no {layer} point at {x}: run benchmarks/bench_models.py")
        c = crossover([r["x"] for r in mine], [r["fp32_ms"] / r["int8_ms"] for r in mine])
        out[letter] = dict(row, speedup=row["fp32_ms"] / row["int8_ms"], crossover=c)
    return out


@exercise("07.3", "which layers at batch 1 run faster in int8 (float in/out), by the recorded sweep")
def _check_07_3(answer) -> list[str]:
    letters = sorted(SWEEP_CASES_07)
    got, problem = _letter_set(answer, letters, "the layers int8 makes faster")
    if problem:
        return [problem]
    sweep = _sweep_07()
    problems = []
    for letter in letters:
        r = sweep[letter]
        what = SWEEP_CASES_07[letter][2]
        timed = f"recorded x{r['speedup']:.2f} (fp32 {r['fp32_ms'] * 1000:.0f} us, int8 {r['int8_ms'] * 1000:.0f} us)"
        wins = r["speedup"] > 1
        if wins and letter not in got:
            problems.append(
                f"missing {letter}, {what}: {timed}; its {r['macs']:,} multiply-adds repay the quantize "
                "and dequantize at its boundaries"
            )
        elif not wins and letter in got:
            where = f" (int8 wins from {r['crossover']} in this sweep)" if r["crossover"] is not None else ""
            problems.append(
                f"not {letter}, {what}: {timed}; {r['macs']:,} multiply-adds are too few to repay the fixed "
                f"cost of quantizing the input and dequantizing the output{where}"
            )
    return problems
