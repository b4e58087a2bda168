"""Compile ``qlab/csrc/*.cpp`` once, cache the shared library, load it.

The library lands in ``<cache>/ext-<hash>/qlab_ext.so`` where ``<cache>`` is
``$QLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/qlab``, else ``~/.cache/qlab``, and
``<hash>`` covers the C++ sources, the compiler flags, the torch and Python
versions. A later import finds ``qlab_ext.so`` next to a ``built-ok`` marker and
loads it directly (``torch.ops.load_library``): no compiler, no ninja, no waiting.
Changing a source file or upgrading torch gives a new hash, hence a rebuild.

Flags: ``-O3 -fopenmp -ffp-contract=off`` and nothing CPU-specific. The SIMD
functions carry their own ``__attribute__((target(...)))``, so one build runs on any
x86-64 CPU and picks its path at run time. ``-fopenmp`` makes ``at::parallel_for``
use ATen's OpenMP thread pool (without it, it silently runs on one thread);
``-ffp-contract=off`` forbids fusing a multiply and an add into an FMA, which would
change float32 rounding and break bit-exactness with PyTorch (where a definition has
a fused multiply-add, as the fused attention's ``exp`` does, the code writes it).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

NAME = "qlab_ext"
CSRC = Path(__file__).resolve().parent.parent / "csrc"
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
LDFLAGS = ["-fopenmp"]
_MARKER = "built-ok"
STALE_LOCK_S = 900  # a build takes about a minute; a lock this old belongs to a killed build


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def cache_root() -> Path:
    if os.environ.get("QLAB_CACHE_DIR"):
        return Path(os.environ["QLAB_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qlab"


def build_dir() -> Path:
    """``<cache>/ext-<hash of sources, flags, torch and Python versions>``."""
    h = hashlib.sha256()
    for f in sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("*.h")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    for s in (torch.__version__, sys.version, platform.machine(), " ".join(CFLAGS), " ".join(LDFLAGS)):
        h.update(s.encode())
    return cache_root() / f"ext-{h.hexdigest()[:16]}"


def library_path() -> Path:
    return build_dir() / f"{NAME}.so"


def is_built() -> bool:
    d = build_dir()
    return (d / _MARKER).is_file() and (d / f"{NAME}.so").is_file()


def compile_and_load(verbose: bool = False) -> tuple[Path, bool]:
    """Load the cached library, compiling it first if needed; return ``(path, compiled_now)``.

    Raises if the build fails.
    """
    d = build_dir()
    so = d / f"{NAME}.so"
    if is_built():
        torch.ops.load_library(str(so))
        return so, False
    if not sources():
        raise FileNotFoundError(f"no C++ sources in {CSRC}")
    import logging

    from .._env import drop_log_message

    # imported only to build: it is slow, and on import it logs "No CUDA runtime is found", which says nothing
    # about a CPU-only build; dropped while importing only, so a notebook prints the same whether it compiles or not
    log, msg = logging.getLogger("torch.utils.cpp_extension"), "No CUDA runtime is found"
    kept = [f for f in log.filters if getattr(f, "start", None) == msg]  # someone already dropped it: leave theirs
    f = drop_log_message("torch.utils.cpp_extension", msg)
    try:
        from torch.utils import cpp_extension
    finally:
        if not kept:
            log.removeFilter(f)

    d.mkdir(parents=True, exist_ok=True)
    lock = d / "lock"  # torch's build lock; a killed build leaves it behind and the next one would wait forever
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    path = cpp_extension.load(
        name=NAME,
        sources=[str(s) for s in sources()],
        extra_cflags=CFLAGS,
        extra_ldflags=LDFLAGS,
        build_directory=str(d),
        is_python_module=False,
        verbose=verbose,
    )
    tmp = d / f"{_MARKER}.tmp{os.getpid()}"
    tmp.write_text(f"torch {torch.__version__}\n")
    os.replace(tmp, d / _MARKER)
    return Path(path), True
