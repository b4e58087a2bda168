"""The one timer of the workbook and its benchmarks: candidates timed *in turn*, medians with spread.
Used by the latency cells of ``notebooks/03``-``08`` and every script in ``benchmarks/``.

A shared 2-core machine is noisy: another process can steal a core for a second. So
:func:`time_interleaved` runs the candidates in rounds, rotating their order each round
(round 1: a, b, c; round 2: b, c, a; ...): a slow spell hits all of them alike. Each
round runs every candidate ``number`` times back to back and records the time per call.
With ``t_i`` and ``b_i`` a candidate's and the baseline's time in round ``i``::

    median  = the median of t_1 .. t_n             (reported)
    IQR     = [the 25th, the 75th percentile]      (how noisy the median is)
    speedup = median over rounds of  b_i / t_i     (> 1: faster than the baseline)

The speedup is paired per round, so a slow spell that hits one round cancels in its ratio.
Only ratios measured in one run mean anything; absolute milliseconds describe one machine at
one moment, which is why every result also carries the load average before and after.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch

from ._checks import check_int, check_number

__all__ = ["Timing", "Timings", "time_interleaved", "iqr_overlap", "speedups", "geomean", "loadavg", "wait_for_quiet",
           "write_recording"]


def loadavg() -> float:
    """The 1-minute load average (runnable processes; on 2 cores above 0.5 means someone else is busy)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on Linux/macOS
        return math.nan


def wait_for_quiet(max_load: float = 0.5, timeout_s: float = 600.0, poll_s: float = 10.0) -> float:
    """Wait until the 1-minute load average is at most ``max_load``, then return it; raise ``RuntimeError``
    after ``timeout_s``. The benchmarks refuse to record on a busy machine: on 2 cores, one other busy
    process halves what a 2-thread measurement gets and slows the single-thread ones unevenly."""
    check_number("max_load", max_load, 0, lo_open=True)
    deadline = time.monotonic() + timeout_s
    while True:
        load = loadavg()
        if not load > max_load:  # also NaN: no load average on this OS
            return load
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the machine stayed busy (load average {load} > {max_load}) for {timeout_s:.0f} s: "
                "a recording made now would measure the other processes; stop them and retry"
            )
        time.sleep(poll_s)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (NumPy's default)."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Timing:
    """One candidate's time per call (ms) in each round; ``median`` is what is reported."""

    name: str
    samples: list[float] = field(default_factory=list)
    number: int = 1

    @property
    def median(self) -> float:
        return _quantile(sorted(self.samples), 0.5)

    @property
    def iqr(self) -> tuple[float, float]:
        """The 25th and 75th percentiles (ms)."""
        s = sorted(self.samples)
        return _quantile(s, 0.25), _quantile(s, 0.75)

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median (0.05: the middle half within 5%)."""
        lo, hi = self.iqr
        return (hi - lo) / self.median

    def as_dict(self) -> dict:
        lo, hi = self.iqr
        return {
            "median_ms": round(self.median, 4),
            "q25_ms": round(lo, 4),
            "q75_ms": round(hi, 4),
            "rounds": len(self.samples),
            "calls_per_round": self.number,
        }


class Timings(dict):
    """``{name: Timing}`` in the order given, plus ``load``: the load average before and after."""

    load: tuple[float, float] = (math.nan, math.nan)


def write_recording(out: str | os.PathLike, meta: dict, t0: float, **sections: object) -> pathlib.Path:
    """End a benchmark's run: ``meta`` gets the load average after (``loadavg_after``) and the wall time since ``t0``
    (a ``time.perf_counter()`` from the start, ``wall_s``), then ``{"meta": meta, **sections}`` is written to ``out``
    as indented JSON (folders made as needed). Returns the path written."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (the machine and the command), got {type(meta).__name__}")
    check_number("t0", t0)
    meta["loadavg_after"] = loadavg()
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, **sections}, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 15,
    number: int | None = None,
    warmup: int = 2,
    target_s: float = 0.02,
    max_number: int = 1000,
) -> Timings:
    """Time zero-argument callables in interleaved rounds, under ``torch.no_grad()``.

    Each candidate is first called ``warmup`` times (compiled models compile there). Then
    ``rounds`` rounds run every candidate ``number`` times in a row (default: as many calls as
    take about ``target_s`` seconds, 1 to ``max_number``), rotating the order each round.
    """
    if not isinstance(fns, Mapping) or not fns:
        raise TypeError("fns must be a non-empty dict of name -> zero-argument callable")
    for k, f in fns.items():
        if not callable(f):
            raise TypeError(f"fns[{k!r}] must be callable, got {type(f).__name__}")
    check_int("rounds", rounds, 1)
    if number is not None:
        check_int("number", number, 1)
    check_int("warmup", warmup, 0)
    check_int("max_number", max_number, 1)
    check_number("target_s", target_s, 0, lo_open=True)

    names = list(fns)
    counts: dict[str, int] = {}
    out = Timings()
    before = loadavg()
    with torch.no_grad():
        for n in names:
            for _ in range(warmup):
                fns[n]()
            if number is None:
                t0 = time.perf_counter()
                fns[n]()
                one = max(time.perf_counter() - t0, 1e-7)
                counts[n] = max(1, min(max_number, int(target_s / one)))
            else:
                counts[n] = number
            out[n] = Timing(n, number=counts[n])
        for r in range(rounds):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                f, calls = fns[n], counts[n]
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                out[n].samples.append((time.perf_counter() - t0) * 1e3 / calls)
    out.load = (before, loadavg())
    return out


def iqr_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two interquartile ranges ``(q25, q75)`` overlap: if they do, the recording does not tell the two
    medians apart (the middle halves of their rounds interleave), and a report calls them tied."""
    for name, r in (("a", a), ("b", b)):
        if len(r) != 2 or not r[0] <= r[1]:
            raise ValueError(f"{name} must be a (q25, q75) pair with q25 <= q75, got {r!r}")
    return a[0] <= b[1] and b[0] <= a[1]


def speedups(timings: Mapping[str, Timing], baseline: str) -> dict[str, float]:
    """``{name: median over rounds of baseline_i / name_i}``: > 1 means faster than ``baseline``.

    Rounds are paired (both timed in the same round), so a slow spell cancels in its ratio.
    """
    if baseline not in timings:
        raise ValueError(f"baseline must be one of {sorted(timings)}, got {baseline!r}")
    base = timings[baseline].samples
    out = {}
    for n, t in timings.items():
        if len(t.samples) != len(base):
            raise ValueError(f"{n!r} has {len(t.samples)} rounds, the baseline {len(base)}: time them together")
        out[n] = statistics.median(b / s for b, s in zip(base, t.samples, strict=True))
    return out


def geomean(values: Iterable[float]) -> float:
    """Geometric mean ``exp(mean(log v))`` of positive numbers: the only mean for which
    "2x faster on one model, 2x slower on another" averages to 1x."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values must not be empty")
    if not all(v > 0 and math.isfinite(v) for v in vals):
        raise ValueError(f"values must be positive and finite, got {vals}")
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
