"""The roofline of the CPU you run on (notebook 12, section 2): how fast its int8 instruction multiply-adds, how fast
memory feeds it, and where an int8 linear sits between the two. One core throughout.

(4) the roof: a kernel that does I multiply-adds per byte it moves can reach at most
        attainable(I) = min(P, B · I)                    P: peak multiply-adds/s, B: bytes/s from memory
(5) an int8 linear [M, K] x [K, N] (uint8 in, int8 weight, 8-bit or 4-byte out) reads and writes at least
        bytes = K·N + M·K + M·N·out_bytes,   I = M·K·N / bytes
    with its weight cold (not in any cache, as in a model whose layers do not all fit): at M = 1 it is one
    multiply-add per weight byte, memory-bound; at hundreds of tokens the weight is reused from cache, compute-bound.
    The ridge I = P / B is where the two roofs meet.

``P`` comes from :func:`peak_gmacs`: the path's multiply-add instruction in a loop on registers only (C++,
``qlab/csrc/probes.cpp``), the fastest of a few rounds. ``B`` from :func:`read_bandwidth_gbs`: reading a buffer
larger than the last-level cache. Both are measured here and now, so they describe this machine under its
current load.
"""

from __future__ import annotations

import itertools
import math
import pathlib

import torch
from matplotlib.figure import Figure

from . import kernels as qk
from ._checks import check_choice, check_int, check_number
from ._env import scoped
from .timing import time_interleaved

__all__ = [
    "PROBED_ISAS", "peak_gmacs", "clock_ghz", "last_level_cache_bytes", "read_bandwidth_gbs", "linear_intensity",
    "attainable_gmacs", "VIT_B_LINEARS", "time_linears", "recorded_roofline", "draw_roofline",
]

#: The paths with one multiply-add instruction to probe (the scalar path has none).
PROBED_ISAS = ("avx2", "avx_vnni", "avx512_vnni", "amx")
#: ViT-B's four linears, ``(K, N)`` (in features, out features).
VIT_B_LINEARS = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)}


def _native(what: str) -> None:
    if qk.backend() != "native":
        raise RuntimeError(f"{what} runs the compiled kernels' probe; qlab.kernels is using the pure-PyTorch "
                           "reference here (QLAB_NO_EXT=1 or no C++ compiler), which has no instruction to probe")


def _burst_rate(call, seconds: float, rounds: int) -> float:
    """Work per second of ``call(n) -> work``, n sized so one call takes about ``seconds``: the fastest round."""
    n = 1024
    while True:  # grow n until a call is long enough to time (and past any warm-up of the vector units)
        t = time_interleaved({"probe": lambda n=n: call(n)}, rounds=1, number=1, warmup=1)["probe"].samples[0] / 1e3
        if t >= seconds / 4 or n >= 1 << 26:
            break
        n = min(1 << 26, n * 4)
    n = max(1, min(1 << 26, int(n * seconds / max(t, 1e-9))))
    # a core that was idle may take a few hundred milliseconds to reach its full clock: run ~0.25 s first
    best_ms = min(time_interleaved({"probe": lambda: call(n)}, rounds=rounds, number=1,
                                   warmup=max(1, int(0.25 / seconds)))["probe"].samples)
    return call(n) / (best_ms / 1e3)


def peak_gmacs(isa: str | None = None, *, seconds: float = 0.01, rounds: int = 5) -> float:
    """G multiply-adds per second one core does with ``isa``'s instruction (default: the path the ops use now),
    on registers only: ``vpmaddwd`` (avx2), ``vpdpbusd`` on ymm (avx_vnni) or zmm (avx512_vnni), ``tdpbusd`` (amx)."""
    _native("peak_gmacs")
    isa = qk.isa() if isa is None else isa
    check_choice("isa", isa, PROBED_ISAS)
    if isa not in qk.available_isas():
        raise ValueError(f"isa {isa!r} is not supported by this CPU; it runs {qk.available_isas()}")
    check_number("seconds", seconds, 0, 1, lo_open=True)
    check_int("rounds", rounds, 1)
    with scoped(threads=1):
        return _burst_rate(lambda n: torch.ops.qlab._peak_burst(isa, n), seconds, rounds) / 1e9


def clock_ghz(*, seconds: float = 0.005, rounds: int = 9) -> float:
    """The core's clock while busy (GHz): dependent 64-bit multiplications, 3 cycles each on x86 cores."""
    _native("clock_ghz")
    check_number("seconds", seconds, 0, 1, lo_open=True)
    check_int("rounds", rounds, 1)
    with scoped(threads=1):
        return _burst_rate(torch.ops.qlab._clock_burst, seconds, rounds) / 1e9


def last_level_cache_bytes() -> int | None:
    """The largest cache Linux reports for CPU 0 (``/sys/devices/system/cpu/cpu0/cache``), or None."""
    sizes = []
    for f in pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


def _cold_bytes() -> int:
    """A footprint no cache holds: twice the last-level cache, at least 64 MiB, at most 512 MiB."""
    llc = last_level_cache_bytes() or 0
    return min(512 << 20, max(64 << 20, 2 * llc))


def _reader(nbytes: int):
    """A call that reads ``nbytes`` once (``torch.max`` over int32: vectorized, no writes)."""
    x = torch.zeros(nbytes // 4, dtype=torch.int32)
    return lambda: x.max()


def read_bandwidth_gbs(nbytes: int | None = None, *, rounds: int = 5) -> float:
    """GB/s one core reads from memory: the median time of one read of ``nbytes`` (default: twice the last-level
    cache, at least 64 MiB)."""
    nbytes = _cold_bytes() if nbytes is None else nbytes
    check_int("nbytes", nbytes, 1 << 20)
    check_int("rounds", rounds, 1)
    with scoped(threads=1):
        t = time_interleaved({"read": _reader(nbytes)}, rounds=rounds, number=1, warmup=1)["read"]
    return nbytes / (t.median / 1e3) / 1e9


def linear_intensity(m: int, k: int, n: int, out_bytes: int = 1) -> float:
    """Equation (5): multiply-adds per byte of an int8 linear with a cold weight."""
    for name, v in (("m", m), ("k", k), ("n", n)):
        check_int(name, v, 1)
    check_choice("out_bytes", out_bytes, (1, 4))
    return m * k * n / (k * n + m * k + m * n * out_bytes)


def attainable_gmacs(intensity: float, peak: float, bandwidth: float) -> float:
    """Equation (4): ``min(peak, bandwidth · intensity)`` (G multiply-adds/s; bandwidth in GB/s)."""
    for name, v in (("intensity", intensity), ("peak", peak), ("bandwidth", bandwidth)):
        check_number(name, v, 0, lo_open=True)
    return min(peak, bandwidth * intensity)


def time_linears(shapes: dict[str, tuple[int, int, int]], *, rounds: int = 7, cold_bytes: int | None = None,
                 seed: int = 0) -> dict:
    """Time ``qlab.kernels.int8_linear_packed`` (uint8 in and out, per-channel weight; the path the ops use now) on
    one core for each ``name: (M, K, N)``, interleaved with a read of ``cold_bytes`` (default: twice the last-level
    cache), so the bandwidth roof is measured in the same rounds; each linear call takes the next of enough distinct
    packed weights to fill ``cold_bytes``: the weight comes from memory, as in a real model.
    Returns ``{"bandwidth_gbs": B, "points": {name: {"ms", "gmacs", "intensity"}}}`` (median ms per call)."""
    if not isinstance(shapes, dict) or not shapes:
        raise TypeError("shapes must be a non-empty dict of name -> (M, K, N)")
    cold = _cold_bytes() if cold_bytes is None else cold_bytes
    check_int("cold_bytes", cold, 0)
    g = torch.Generator().manual_seed(seed)
    pools: dict[tuple[int, int], list[torch.Tensor]] = {}
    calls = {}
    for name, shape in shapes.items():
        if not (isinstance(shape, tuple) and len(shape) == 3):
            raise TypeError(f"shapes[{name!r}] must be (M, K, N), got {shape!r}")
        m, k, n = shape
        intensity = linear_intensity(m, k, n)  # also checks the sizes
        if (k, n) not in pools:
            count = max(1, math.ceil(cold / (k * n)))
            w = torch.randint(-127, 128, (count, n, k), dtype=torch.int8, generator=g)
            pools[(k, n)] = [qk.pack_linear_weight(w[i]) for i in range(count)]
        ws = torch.rand(n, generator=g) * 1e-3 + 1e-4
        x = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
        weights = itertools.cycle(pools[(k, n)])

        def call(x=x, ws=ws, n=n, weights=weights):
            return qk.int8_linear_packed(x, next(weights), n, ws, x_scale=0.02, x_zero_point=128, out_scale=0.05,
                                         out_zero_point=128)

        calls[name] = (call, m * k * n, intensity)
    fns = {name: c[0] for name, c in calls.items()}
    fns[" read"] = _reader(max(cold, 1 << 20))
    with scoped(threads=1):
        t = time_interleaved(fns, rounds=rounds, warmup=1, target_s=0.01)
    return {"bandwidth_gbs": max(cold, 1 << 20) / (t[" read"].median / 1e3) / 1e9,
            "points": {name: {"ms": t[name].median, "gmacs": macs / (t[name].median / 1e3) / 1e9,
                              "intensity": intensity} for name, (_, macs, intensity) in calls.items()}}


def recorded_roofline(results: dict) -> dict:
    """From ``kernels.json`` (:func:`qlab.perf.load_kernel_results`): the recorded machine's probed peaks and qlab's
    ViT-B linears at 197 tokens on each path, as :func:`draw_roofline`'s ``recorded``."""
    from .inside import linear_peaks

    points = {}
    for shape, row in linear_peaks(results).items():
        k, n = (int(v) for v in shape.split()[1].split("->"))
        for path, v in row.items():
            points[f"{shape.split()[0]} {path}"] = (linear_intensity(197, k, n), v["gmacs"])
    peaks = {p: v["gmacs_per_s"] for p, v in results["assumptions"]["measured_peak_per_core"].items()}
    return {"label": f"recorded on {results['machine']['cpu']}", "peaks": peaks, "points": points}


def _clusters(points: dict[str, dict[str, float]]) -> list[list[str]]:
    """Names grouped by intensity, neighbours within a factor 1.3 in one group."""
    groups: list[list[str]] = []
    for name in sorted(points, key=lambda n: points[n]["intensity"]):
        if groups and points[name]["intensity"] < 1.3 * points[groups[-1][-1]]["intensity"]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def draw_roofline(fig: Figure, peak: float, bandwidth: float, points: dict[str, dict[str, float]],
                  recorded: dict | None = None) -> dict[str, float]:
    """Equation (4) on log-log axes with ``points`` (from :func:`time_linears`) on it; ``recorded``: optional
    ``{"label": str, "peaks": {path: G/s}, "points": {name: (intensity, G/s)}}`` drawn dashed / hollow beside.
    Returns each point's share of the roof above it (1.0 = on the roof)."""
    intensities = [p["intensity"] for p in points.values()]
    xs = [min(intensities + [1.0]) / 2, max(intensities + [peak / bandwidth]) * 8]  # room for the labels
    grid = [xs[0] * (xs[1] / xs[0]) ** (i / 200) for i in range(201)]
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(grid, [attainable_gmacs(i, peak, bandwidth) for i in grid], color="k",
            label=f"this CPU: {peak:.0f} G/s peak, {bandwidth:.0f} GB/s")
    ax.axvline(peak / bandwidth, color="k", lw=0.5, ls=":")
    share = {}
    for name, p in points.items():
        ax.scatter([p["intensity"]], [p["gmacs"]], zorder=3)
        share[name] = p["gmacs"] / attainable_gmacs(p["intensity"], peak, bandwidth)
    for group in _clusters(points):  # one label per cluster of nearby intensities ("qkv/proj/fc1/fc2, 197 tokens")
        heads = [n.split(",")[0] for n in group]
        tails = {n.partition(",")[2] for n in group}
        label = "/".join(heads) + ("," + tails.pop() if len(tails) == 1 else "") if len(group) > 1 else group[0]
        p = points[group[0]]
        ax.annotate(label, (p["intensity"], min(points[n]["gmacs"] for n in group)), textcoords="offset points",
                    xytext=(4, -12), fontsize=7)
    if recorded:
        for path, pk in recorded["peaks"].items():
            ax.axhline(pk, ls="--", lw=0.8, color="gray")
            ax.annotate(f"{path} peak", (xs[0], pk), fontsize=7, color="gray", textcoords="offset points",
                        xytext=(2, 2))
        i_g = list(recorded["points"].values())
        ax.scatter([i for i, _ in i_g], [g for _, g in i_g], facecolors="none", edgecolors="gray", zorder=3,
                   label=f"{recorded['label']}: its peaks (dashed), qlab's linears")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("multiply-adds per byte moved (5)")
    ax.set_ylabel("G multiply-adds / s, one core")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return share
