"""Environment facts, the one call at the top of every notebook (:func:`setup`), and the one
place where qlab changes global state (:func:`scoped`).

Global state that changes results: the quantized engine (``torch.backends.quantized.engine``),
the random generators (Python, NumPy, torch), torch's thread count and Inductor's config
(``freezing``). qlab never assigns them directly: every change goes through :func:`scoped`,
which restores them when the block ends, so a result cannot depend on which function ran
before (``tests/test_state.py`` checks every public qlab function).

What the libraries will *use* is not always what the CPU has: oneDNN honours
``ONEDNN_MAX_CPU_ISA``, ATen ``ATEN_CPU_CAPABILITY``, MKL ``MKL_ENABLE_INSTRUCTIONS``, FBGEMM
``FBGEMM_ENABLE_INSTRUCTIONS`` and qlab's kernels ``QLAB_ISA``. :func:`int8_units` says which int8
instructions each library can reach here; notebooks state ISA-dependent claims under it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from ._checks import check_int

__all__ = ["EnvInfo", "EXPLAINED_WARNINGS", "cpu_flags", "isa_summary", "int8_units", "env_info", "machine_info",
           "filter_explained_warnings", "drop_log_message", "setup", "scoped", "engine"]

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


# oneDNN's ISA names, in its order (src/cpu/x64/cpu_isa_traits.hpp); ONEDNN_MAX_CPU_ISA caps at one of them.
_ONEDNN_ORDER = [
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
]
_FBGEMM_ORDER = ["AVX2", "AVX512", "AVX512_E1", "AVX512_VNNI", "AVX512_VNNI_BF16"]


def _allows(order: list[str], cap: str, level: str) -> bool:
    """Whether a library capped at ``cap`` (an environment variable's value; empty: no cap) may use ``level``."""
    cap = cap.strip().upper()
    if not cap or cap in ("ALL", "DEFAULT"):
        return True
    if cap not in order:
        return True  # a value the library does not know: it ignores it
    return order.index(level) <= order.index(cap)


def int8_units(flags: set[str] | None = None, environ=None) -> dict[str, str]:
    """The fastest int8 multiply-add each library can use on this CPU, given its environment caps.

    Returns ``{"onednn": ..., "fbgemm": ..., "aten": ...}`` with values ``"amx"``, ``"avx512_vnni"``,
    ``"avx_vnni"`` or ``"avx2"`` (no VNNI: ``vpmaddubsw``). oneDNN (PT2E + Inductor, the x86 engine's
    convolutions) honours ``ONEDNN_MAX_CPU_ISA``; FBGEMM (the fbgemm engine, the x86 engine's linears)
    ``FBGEMM_ENABLE_INSTRUCTIONS`` and has no AMX path; ATen's own kernels ``ATEN_CPU_CAPABILITY``.
    """
    flags = cpu_flags() if flags is None else flags
    env = os.environ if environ is None else environ
    cap = env.get("ONEDNN_MAX_CPU_ISA", "")
    if "amx_int8" in flags and "amx_tile" in flags and _allows(_ONEDNN_ORDER, cap, "AVX10_1_512_AMX"):
        onednn = "amx"
    elif "avx512_vnni" in flags and _allows(_ONEDNN_ORDER, cap, "AVX512_CORE_VNNI"):
        onednn = "avx512_vnni"
    elif "avx_vnni" in flags and _allows(_ONEDNN_ORDER, cap, "AVX2_VNNI"):
        onednn = "avx_vnni"
    else:
        onednn = "avx2"
    fcap = env.get("FBGEMM_ENABLE_INSTRUCTIONS", "")
    fbgemm = "avx512_vnni" if "avx512_vnni" in flags and _allows(_FBGEMM_ORDER, fcap, "AVX512_VNNI") else "avx2"
    try:
        aten = torch.backends.cpu.get_cpu_capability().lower()
    except Exception:
        aten = "unknown"
    return {"onednn": onednn, "fbgemm": fbgemm, "aten": aten}


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
    int8: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def vnni(self) -> bool:
        """Whether oneDNN (PT2E + Inductor, the x86 engine's convolutions) may use a VNNI int8 dot product."""
        return self.int8.get("onednn") in ("amx", "avx512_vnni", "avx_vnni")

    @property
    def amx(self) -> bool:
        """Whether oneDNN may use AMX-INT8 tiles here (the CPU has them and ``ONEDNN_MAX_CPU_ISA`` allows them)."""
        return self.int8.get("onednn") == "amx"

    def lines(self) -> list[str]:
        v = " | ".join(f"{k} {val}" for k, val in self.versions.items())
        units = ", ".join(f"{lib} {u}" for lib, u in self.int8.items() if lib != "aten")
        return [
            v,
            f"CPU: {self.cpu}",
            f"ISA: {' '.join(self.isa) or 'none of AVX2/AVX-512/VNNI/AMX'}"
            f" (torch dispatch: {self.torch_cpu_capability}; int8 units in use: {units})",
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
    return EnvInfo(versions, cpu_name(), isa_summary(), capability, engines, torch.get_num_threads(), int8_units())


def machine_info() -> dict:
    """What a timing depends on, for benchmark result files: CPU, ISA, the int8 units each library may
    use, versions, cores and threads, the quantized engines, and the 1-minute load average now."""
    info = env_info()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "cpu": info.cpu,
        "isa": info.isa,
        "torch_cpu_capability": info.torch_cpu_capability,
        "int8_units": info.int8,
        "isa_caps": {
            k: os.environ[k]
            for k in (
                "ATEN_CPU_CAPABILITY",
                "ONEDNN_MAX_CPU_ISA",
                "MKL_ENABLE_INSTRUCTIONS",
                "FBGEMM_ENABLE_INSTRUCTIONS",
                "QLAB_ISA",
            )
            if os.environ.get(k)
        },
        "cores": os.cpu_count(),
        "threads": info.threads,
        "torch": torch.__version__,
        **{k: v for k, v in info.versions.items() if k not in ("qlab", "torch")},
        "quantized_engines": info.engines,
        "loadavg": load,
    }


#: The warnings notebook 00 triggers and explains once; :func:`setup` filters exactly these afterwards
#: (by category and message, nothing else): name -> (category, message regex, the one-line explanation).
EXPLAINED_WARNINGS = {
    "torch.ao.quantization": (DeprecationWarning, r".*torch\.ao\.quantization.*is deprecated",
                              "the eager and FX flows are deprecated in favour of torchao (PT2E); they still work"),
    "reduce_range": (UserWarning, r"Please use quant_min and quant_max to specify the range",
                     "observers' reduce_range flag will give way to explicit quant_min/quant_max"),
    "quantized tensors": (UserWarning, r".*quantized tensor creation functions.*deprecated",
                          "torch.quint8/qint8 tensors will give way to plain integer tensors (as PT2E uses)"),
}
#: The log line torchao's import writes (a torch deprecation inside torchao), dropped by :func:`setup`.
EXPLAINED_LOG = ("torch.utils._pytree", "<enum 'KernelPreference'> is an Enum subclass")


class _DropMessage:
    def __init__(self, start: str):
        self.start = start

    def filter(self, record) -> bool:
        return not record.getMessage().startswith(self.start)


def drop_log_message(logger: str, start: str):
    """Drop the log records of ``logger`` whose message starts with ``start``; everything else it logs still
    shows. Idempotent; returns the filter (``logging.getLogger(logger).removeFilter(f)`` undoes it)."""
    import logging

    if not isinstance(logger, str) or not isinstance(start, str) or not start:
        raise TypeError("logger and start must be strings, start non-empty")
    log = logging.getLogger(logger)
    for f in log.filters:
        if isinstance(f, _DropMessage) and f.start == start:
            return f
    f = _DropMessage(start)
    log.addFilter(f)
    return f


def filter_explained_warnings() -> None:
    """Filter the warnings of :data:`EXPLAINED_WARNINGS` and the log line :data:`EXPLAINED_LOG` (idempotent)."""
    import warnings

    for category, message, _ in EXPLAINED_WARNINGS.values():
        warnings.filterwarnings("ignore", message=message, category=category)
    drop_log_message(*EXPLAINED_LOG)


def _max_threads() -> int:
    cap = os.cpu_count() or 1
    env = os.environ.get("QLAB_MAX_THREADS")
    if env:
        try:
            cap = min(cap, check_int("QLAB_MAX_THREADS", int(env), 1))
        except ValueError:
            raise ValueError(f"QLAB_MAX_THREADS must be a positive integer, got {env!r}") from None
    return cap


def setup(seed: int = 0, threads: int | None = 2, quiet: bool = False, filter_warnings: bool = True) -> EnvInfo:
    """Make a notebook reproducible and say what it runs on.

    Seeds Python, NumPy and torch; fixes torch's intra-op thread count
    (``threads``, capped at the machine's cores and at ``$QLAB_MAX_THREADS`` if set -- a workshop hub sets
    it to give each learner one core; ``None`` leaves it); makes
    matplotlib render PNG at a fixed size so committed notebooks stay small;
    prints the environment line (versions, CPU ISA, quantized engines); filters the warnings
    notebook 00 explains (:data:`EXPLAINED_WARNINGS`), unless ``filter_warnings=False``.
    """
    check_int("seed", seed, 0)
    if threads is not None:
        check_int("threads", threads, 1)
        torch.set_num_threads(min(threads, _max_threads()))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if filter_warnings:
        filter_explained_warnings()

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


@contextlib.contextmanager
def scoped(
    *, engine: str | None = None, seed: int | None = None, threads: int | None = None, inductor: dict | None = None
):
    """Run a block with changed global state, and restore all of it afterwards::

        with qlab.scoped(engine="fbgemm", seed=0, threads=1, inductor={"freezing": True}):
            ...

    ``engine``: ``torch.backends.quantized.engine`` (int8 modules are packed for it at ``convert``
    and must run under it); ``seed``: seeds Python's, NumPy's and torch's generators (their states
    are saved and restored whether or not a seed is given, so random draws inside the block never
    shift what the caller draws next); ``threads``: torch's intra-op threads; ``inductor``: flags of
    ``torch._inductor.config`` (e.g. ``freezing``), read when a compiled model first runs.
    """
    if engine is not None:
        engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
        if engine not in engines:
            raise ValueError(f"engine must be one of {engines}, got {engine!r}")
    if seed is not None:
        check_int("seed", seed, 0)
    if threads is not None:
        check_int("threads", threads, 1)
    if inductor is not None and not isinstance(inductor, dict):
        raise TypeError(f"inductor must be a dict of torch._inductor.config flags, got {type(inductor).__name__}")
    saved = (torch.backends.quantized.engine, torch.get_num_threads(), random.getstate(), np.random.get_state())
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        if inductor:
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(**inductor))
        try:
            if engine is not None:
                torch.backends.quantized.engine = engine
            if threads is not None:
                torch.set_num_threads(threads)
            if seed is not None:
                random.seed(seed)
                np.random.seed(seed)
                torch.manual_seed(seed)
            yield
        finally:
            torch.backends.quantized.engine = saved[0]
            if torch.get_num_threads() != saved[1]:
                torch.set_num_threads(saved[1])
            random.setstate(saved[2])
            np.random.set_state(saved[3])


class engine:  # noqa: N801 -- used like a function: ``with engine("fbgemm"): ...``
    """``with qlab.engine("fbgemm"): ...`` -- only ``torch.backends.quantized.engine``, set for the block and
    restored after it: the cheap form of ``scoped(engine=...)`` for a call that runs many times (a converted
    model calls it on every forward, see :class:`qlab.flows.OnEngine`; ``scoped`` also saves and restores
    three random generators, which costs more than a small int8 model's forward)."""

    __slots__ = ("name", "saved")

    def __init__(self, name: str):
        if name not in torch.backends.quantized.supported_engines or name == "none":
            engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
            raise ValueError(f"engine must be one of {engines}, got {name!r}")
        self.name = name

    def __enter__(self):
        self.saved = torch.backends.quantized.engine
        if self.saved != self.name:
            torch.backends.quantized.engine = self.name
        return self

    def __exit__(self, *exc):
        if torch.backends.quantized.engine != self.saved:
            torch.backends.quantized.engine = self.saved
        return False
