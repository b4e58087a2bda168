"""The environment check behind ``notebooks/00-setup-check.ipynb``.

Each check says what it found and, when it fails, what to do about it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import shutil
import sys
from dataclasses import dataclass

import torch

from ._env import cpu_flags

__all__ = ["Check", "environment_checks", "report"]

LOCK = pathlib.Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"
_PINNED = ("torch", "torchvision", "torchao", "timm", "ipywidgets", "matplotlib", "nbval", "jupyterlab")


@dataclass
class Check:
    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = True
    machine: bool = False  # describes this machine (CPU, compiler, the kernel build): differs between learners

    @property
    def status(self) -> str:
        return "ok" if self.ok else ("MISSING" if self.required else "optional: no")


def _pins(lock: pathlib.Path = LOCK) -> dict[str, str]:
    if not lock.exists():
        return {}
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment_checks(lock: pathlib.Path = LOCK, flags: set[str] | None = None) -> list[Check]:
    """Everything the workbook needs, in the order a learner should fix it."""
    checks: list[Check] = []
    py = sys.version_info
    checks.append(Check("Python >= 3.10", py >= (3, 10), f"{py.major}.{py.minor}", "install Python 3.10 or newer"))

    pins = _pins(lock)
    for name in _PINNED:
        have = _dist_version(name)
        want = pins.get(name)
        if have is None:
            checks.append(
                Check(f"{name} installed", False, "not installed", "run `make lab` (it installs the pinned set)")
            )
            continue
        base = have.split("+")[0]
        ok = want is None or base == want.split("+")[0]
        checks.append(
            Check(
                f"{name} == pinned",
                ok,
                have,
                f"pinned {want}: run `make lab` in a fresh clone or `pip install -r requirements/lock.txt`",
            )
        )

    for mod, why in (
        ("torchvision", "timm imports it"),
        ("timm", "the ViT notebooks"),
        ("torchao", "PT2E quantization"),
    ):
        try:
            importlib.import_module(mod)
            checks.append(Check(f"import {mod}", True, "imports"))
        except Exception as e:  # a broken install is what this notebook exists to catch
            checks.append(
                Check(f"import {mod}", False, type(e).__name__, f"needed for {why}: reinstall with `make lab`")
            )

    engines = torch.backends.quantized.supported_engines
    checks.append(
        Check(
            "quantized engine x86",
            "x86" in engines,
            " ".join(e for e in engines if e != "none"),
            "this torch build lacks FBGEMM/oneDNN: install the official x86-64 wheel",
        )
    )

    flags = cpu_flags() if flags is None else flags
    checks.append(
        Check(
            "CPU has AVX2",
            "avx2" in flags,
            "yes" if "avx2" in flags else "no",
            "int8 kernels fall back to slow scalar code on this CPU",
            required=False,
            machine=True,
        )
    )
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    checks.append(
        Check(
            "CPU has VNNI (int8 dot product)",
            vnni,
            "yes" if vnni else "no",
            "int8 speedups will be small: the performance notebook explains why",
            required=False,
            machine=True,
        )
    )

    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    checks.append(
        Check(
            "C++ compiler",
            cxx is not None,
            "found" if cxx else "not found",
            "install g++ (Debian/Ubuntu: apt-get install g++); qlab then uses its slower pure-PyTorch kernels",
            required=False,
            machine=True,
        )
    )
    checks.append(
        Check(
            "ninja",
            shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None,
            "found" if importlib.util.find_spec("ninja") else "not found",
            "pip install ninja",
            required=False,
            machine=True,
        )
    )

    if importlib.util.find_spec("qlab.kernels") is not None:
        try:
            kernels = importlib.import_module("qlab.kernels")
            native = kernels.backend() == "native"
            found = f"compiled, {kernels.isa()} path" if native else "pure-PyTorch reference fallback"
            checks.append(
                Check(
                    "qlab int8 kernels compiled",
                    native,
                    found,
                    "run `make setup` to build them (needs a C++ compiler and ninja)",
                    required=False,
                    machine=True,
                )
            )
        except Exception as e:
            checks.append(
                Check("qlab int8 kernels compiled", False, type(e).__name__, "run `make setup`", required=False,
                      machine=True)
            )

    try:
        from jupyter_client.kernelspec import KernelSpecManager

        names = KernelSpecManager().find_kernel_specs()
        checks.append(
            Check(
                "Jupyter kernel 'qlab'",
                "qlab" in names,
                "installed" if "qlab" in names else "not installed",
                "run `make lab` (it installs the kernel)",
                required=False,
            )
        )
    except Exception as e:
        checks.append(Check("Jupyter kernel 'qlab'", False, type(e).__name__, "pip install jupyterlab", required=False))
    return checks


def report(checks: list[Check]) -> str:
    """A fixed-width table: check, status, what was found, and the fix for failures."""
    w = max(len(c.name) for c in checks)
    lines = [f"{'check':<{w}}  {'status':<12}  found"]
    for c in checks:
        lines.append(f"{c.name:<{w}}  {c.status:<12}  {c.found}")
        if not c.ok and c.fix:
            lines.append(f"{'':<{w}}  {'':<12}  -> {c.fix}")
    return "\n".join(lines)
