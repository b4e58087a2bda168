"""Environment facts and the one call at the top of every notebook: :func:`setup`."""
from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["EnvInfo", "cpu_flags", "isa_summary", "env_info", "setup"]

# /proc/cpuinfo flag -> the name a learner meets in Intel/AMD documentation.
_ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty set where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_summary(flags: set[str] | None = None) -> list[str]:
    """The int8-relevant ISA extensions present, e.g. ``['AVX2', 'AVX-512F', 'AVX-512 VNNI']``."""
    flags = cpu_flags() if flags is None else flags
    return [name for flag, name in _ISA_FLAGS.items() if flag in flags]


def _version(dist: str) -> str:
    """The installed distribution's version, without importing it (torchao's import is slow and chatty)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


@dataclass
class EnvInfo:
    versions: dict[str, str]
    cpu: str
    isa: list[str]
    torch_cpu_capability: str
    engines: list[str]
    threads: int
    extra: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        v = " | ".join(f"{k} {val}" for k, val in self.versions.items())
        return [
            v,
            f"CPU: {self.cpu}",
            f"ISA: {' '.join(self.isa) or 'none of AVX2/AVX-512/VNNI/AMX'}"
            f" (torch dispatch: {self.torch_cpu_capability})",
            f"quantized engines: {' '.join(self.engines)} | torch threads: {self.threads}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def env_info() -> EnvInfo:
    from . import __version__

    versions = {"qlab": __version__}
    for mod in ("torch", "torchao", "timm"):
        versions[mod] = _version(mod)
    versions["python"] = platform.python_version()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:
        capability = "unknown"
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    return EnvInfo(versions, cpu_name(), isa_summary(), capability, engines, torch.get_num_threads())


def setup(seed: int = 0, threads: int | None = 2, quiet: bool = False) -> EnvInfo:
    """Make a notebook reproducible and say what it runs on.

    Seeds Python, NumPy and torch; fixes torch's intra-op thread count
    (``threads``, capped at the machine's cores; ``None`` leaves it); makes
    matplotlib render PNG at a fixed size so committed notebooks stay small;
    prints the environment line (versions, CPU ISA, quantized engines).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        torch.set_num_threads(min(threads, os.cpu_count() or 1))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "figure.figsize": (7.0, 3.2)})
    try:  # inside IPython: PNG only, so GitHub and exported HTML show every figure
        from IPython import get_ipython

        if get_ipython() is not None:
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats("png")
    except ImportError:
        pass

    info = env_info()
    if not quiet:
        print(info)
    return info
