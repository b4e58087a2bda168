#!/usr/bin/env python
"""Strict nbval over every notebook again, with the libraries held to what a learner's CPU offers.

    .venv/bin/python scripts/isa_matrix.py            # every setting this CPU can run
    .venv/bin/python scripts/isa_matrix.py avx2       # one setting
    .venv/bin/python scripts/isa_matrix.py --kernel-trace build/kernel-trace.txt   # as make test runs it

A workbook claim that depends on the instruction set must hold (or be stated conditionally) on every
CPU a learner brings, so `make test` replays the committed notebooks under:

* ``avx2``         -- AVX2 only (most AMD Ryzen before Zen 4, older Intel client CPUs): ATen, oneDNN, MKL,
                      FBGEMM and qlab's kernels all held to AVX2 by their environment variables;
* ``avx_vnni``     -- AVX2 plus the 256-bit VNNI of recent Intel client CPUs (Alder Lake and newer): the same,
                      with oneDNN and qlab's kernels on their AVX-VNNI code (with ``--kernel-trace``, only the
                      notebooks that load qlab.kernels, as for ``no_ext``: the rest differ from the ``avx2`` replay
                      only in oneDNN's int8 ISA; every notebook passed it on 2026-12-04, 226 s on a Xeon);
* ``avx512_vnni``  -- AVX-512 with VNNI but no AMX (Xeons before Sapphire Rapids, AMD EPYC Zen 4/5):
                      oneDNN and qlab's kernels held below AMX;
* ``no_ext``       -- no C++ compiler: qlab's kernels served by the pure-PyTorch reference.

A setting the host cannot run (it lacks the instructions), or that the main run already was (an
AVX-512 VNNI host without AMX, an AVX2 host with nothing above it), is skipped with the reason printed.

``--kernel-trace FILE``: the notebooks that loaded ``qlab.kernels`` in the main nbval run (``make test`` runs it
with ``QLAB_KERNEL_TRACE=FILE``; see conftest.py). ``no_ext`` and ``avx_vnni`` then replay only those:
``QLAB_NO_EXT`` changes nothing but ``qlab.kernels``, so a notebook that never loads it runs the same code with or
without a compiler (and ``avx_vnni`` keeps the suite's time in budget).
Without the option every setting replays every notebook.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "QLAB_ISA": "avx2"},
    "avx_vnni": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                 "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "QLAB_ISA": "avx_vnni"},
    "avx512_vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "QLAB_ISA": "avx512_vnni"},
    "no_ext": {"QLAB_NO_EXT": "1"},
}


TRACED_ONLY = ("avx_vnni", "no_ext")  # with --kernel-trace: only the notebooks that loaded qlab.kernels


def cpu_flags() -> set[str]:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def skip_reason(name: str, flags: set[str]) -> str | None:
    if name == "avx2" and not {"avx2", "fma"} <= flags:
        return "this CPU has no AVX2"
    if name == "avx2" and not flags & {"avx512f", "avx_vnni", "amx_int8"}:
        return "this CPU has nothing above AVX2: the main nbval run already was this setting"
    if name == "avx_vnni":
        if not {"avx2", "fma", "avx_vnni"} <= flags:
            return "this CPU has no AVX-VNNI"
        if not flags & {"avx512f", "amx_int8"}:
            return "this CPU has nothing above AVX-VNNI: the main nbval run already was this setting"
    if name == "avx512_vnni":
        if "avx512_vnni" not in flags:
            return "this CPU has no AVX-512 VNNI"
        if "amx_int8" not in flags:
            return "this CPU has no AMX: the main nbval run already was this setting"
    return None


def traced_notebooks(trace: pathlib.Path) -> list[str]:
    """The notebooks named in ``trace`` (one per line, as nbval's node ids give them), in workbook order."""
    if not trace.is_file():
        raise SystemExit(f"--kernel-trace {trace}: no such file (run the main nbval with QLAB_KERNEL_TRACE={trace})")
    names = {ln.strip() for ln in trace.read_text().splitlines() if ln.strip().endswith(".ipynb")}
    missing = sorted(n for n in names if not (ROOT / n).is_file())
    if missing:
        raise SystemExit(f"--kernel-trace {trace} names notebooks that do not exist: {missing}")
    return sorted(names)


def main(argv: list[str]) -> int:
    trace = None
    if "--kernel-trace" in argv:
        i = argv.index("--kernel-trace")
        if i + 1 >= len(argv):
            print("--kernel-trace needs a file")
            return 2
        trace = pathlib.Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    names = argv or list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        print(f"unknown setting(s) {unknown}: choose from {list(SETTINGS)}")
        return 2
    flags, failed = cpu_flags(), []
    for name in names:
        reason = skip_reason(name, flags)
        if reason:
            print(f"== nbval [{name}]: skipped ({reason})", flush=True)
            continue
        env = {**os.environ, **SETTINGS[name]}
        env.pop("QLAB_KERNEL_TRACE", None)
        targets = ["notebooks"]
        if name in TRACED_ONLY and trace is not None:
            targets = traced_notebooks(trace)
            every = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))
            print(f"== nbval [{name}]: the {len(targets)} notebooks that load qlab.kernels ({trace}); not replayed, "
                  f"they never load it: {[pathlib.Path(n).name[:2] for n in every if n not in targets]}", flush=True)
            if not targets:
                continue
        print(f"== nbval [{name}]: " + " ".join(f"{k}={v}" for k, v in SETTINGS[name].items()), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "pytest", *targets, "--nbval", "--nbval-current-env",
                              "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", "-p", "no:cacheprovider",
                              "-p", "no:randomly", "-q"], cwd=ROOT, env=env)
        print(f"== nbval [{name}]: {'passed' if rc == 0 else 'FAILED'} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"nbval failed under: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
