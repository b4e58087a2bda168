"""Global state around every qlab call: the machinery behind tests/test_state.py and tests/conftest.py.

qlab promises that no public function leaves the quantized engine, the random generators (Python,
NumPy, torch), torch's thread count or Inductor's config changed (``qlab.scoped`` is the one place
that changes them, and it restores them). :func:`install` discovers qlab's public functions and the
public methods of its public classes -- every name in every module's ``__all__`` -- and wraps each so
that a call which returns with the state changed is recorded as a leak. The test session runs with
the wrappers installed: a test during which a leak happened fails and names the function, and the
session fails if a public function that changes state (through ``scoped``) was never called.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import random
import sys
import textwrap

import numpy as np
import torch

#: Deliberate exceptions, each with its reason.
EXEMPT = {
    "qlab._env.setup": "the notebook's first call: seeding and fixing threads is its job",
    "qlab._env.scoped": "the context manager that changes state inside its block, and restores it on exit",
    "qlab.kernels.set_isa": "qlab's own kernel path, not global torch state (use_isa restores it)",
}
#: Model constructors draw their random initial weights from torch's generator, as every ``torch.nn`` module does
#: (a notebook seeds it once, in ``qlab.setup``): they may advance it; they may change nothing else.
RANDOM_INIT = {"qlab.vit.build"}
_SKIP_MODULES = ("qlab.kernels.__main__",)
_PLAIN = (bool, int, float, str, type(None))


def snapshot() -> dict:
    """The global state qlab must leave as it found it (read with fake/dispatch modes switched off, since
    qlab's reference ops also run as fake kernels under torch.compile and opcheck)."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return _snapshot()


def _snapshot() -> dict:
    state = {
        "engine": torch.backends.quantized.engine,
        "threads": torch.get_num_threads(),
        "torch_rng": torch.get_rng_state().numpy().tobytes(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
    }
    cfg = sys.modules.get("torch._inductor.config")
    if cfg is not None:  # only once something imported Inductor; the flags with plain values (freezing, ...)
        state["inductor"] = {k: v for k, v in cfg.get_config_copy().items() if isinstance(v, _PLAIN)}
    return state


def differences(before: dict, after: dict, random_init: bool = False) -> list[str]:
    out = []
    for key in ("engine", "threads"):
        if before[key] != after[key]:
            out.append(f"{key} {before[key]!r} -> {after[key]!r}")
    if before["torch_rng"] != after["torch_rng"] and not random_init:
        out.append("torch's random generator advanced or was reseeded")
    b, a = before["numpy_rng"], after["numpy_rng"]
    if b[0] != a[0] or not np.array_equal(b[1], a[1]) or b[2:] != a[2:]:
        out.append("NumPy's random generator advanced or was reseeded")
    if before["python_rng"] != after["python_rng"]:
        out.append("Python's random generator advanced or was reseeded")
    if "inductor" in before and "inductor" in after:
        changed = sorted(k for k, v in after["inductor"].items() if before["inductor"].get(k, v) != v)
        if changed:
            out.append(f"torch._inductor.config changed: {changed[:5]}")
    return out


def public_modules() -> list:
    import qlab

    mods = [qlab]
    for info in pkgutil.walk_packages(qlab.__path__, "qlab."):
        if info.name not in _SKIP_MODULES:
            mods.append(importlib.import_module(info.name))
    return mods


def public_callables() -> dict[str, object]:
    """``{qualified name: function}`` for every function in a qlab module's ``__all__`` and every public
    method (``__init__`` and ``forward`` included) of every class there, defined in qlab itself."""
    found: dict[str, object] = {}
    for mod in public_modules():
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            owner = getattr(obj, "__module__", "") or ""
            if not owner.startswith("qlab"):
                continue
            if inspect.isfunction(obj):
                found.setdefault(f"{owner}.{obj.__qualname__}", obj)
            elif inspect.isclass(obj):
                for attr, fn in vars(obj).items():
                    if inspect.isfunction(fn) and (not attr.startswith("_") or attr in ("__init__", "__call__")):
                        found.setdefault(f"{owner}.{fn.__qualname__}", fn)
    return found


def changes_state(fn) -> bool:
    """Whether ``fn``'s own code enters ``scoped(...)``: the functions the session must call at least once."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    return any(
        isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "scoped"
        for n in ast.walk(tree)
    )


def _is_module_class(init) -> bool:
    """Whether ``init`` is the ``__init__`` of a ``torch.nn.Module`` subclass defined in qlab."""
    owner = sys.modules.get(init.__module__)
    cls = getattr(owner, init.__qualname__.split(".")[0], None)
    return inspect.isclass(cls) and issubclass(cls, torch.nn.Module)


class Monitor:
    """Wraps the public callables; records calls and leaks."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.leaks: list[tuple[str, list[str]]] = []
        self.targets = {k: v for k, v in public_callables().items() if k not in EXEMPT}
        self._originals: list[tuple[object, str, object]] = []

    def _wrap(self, name: str, fn):
        monitor = self
        random_init = name in RANDOM_INIT or (name.endswith(".__init__") and _is_module_class(fn))

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            if torch.compiler.is_compiling():  # traced by Dynamo: the call happens later, in compiled code
                return fn(*args, **kwargs)
            before = snapshot()
            try:
                return fn(*args, **kwargs)
            finally:
                monitor.calls[name] = monitor.calls.get(name, 0) + 1
                diff = differences(before, snapshot(), random_init)
                if diff:
                    monitor.leaks.append((name, diff))

        checked.__qlab_checked__ = True
        return checked

    def install(self) -> "Monitor":
        wrappers = {id(fn): self._wrap(name, fn) for name, fn in self.targets.items()}
        originals = {id(fn): fn for fn in self.targets.values()}
        for mod in public_modules():  # every binding of a wrapped function, module attributes and class methods
            for attr, value in list(vars(mod).items()):
                if inspect.isfunction(value) and id(value) in wrappers and originals[id(value)] is value:
                    self._originals.append((mod, attr, value))
                    setattr(mod, attr, wrappers[id(value)])
                elif inspect.isclass(value) and value.__module__.startswith("qlab"):
                    for cattr, cval in list(vars(value).items()):
                        if inspect.isfunction(cval) and id(cval) in wrappers and originals[id(cval)] is cval:
                            self._originals.append((value, cattr, cval))
                            setattr(value, cattr, wrappers[id(cval)])
        return self

    def uninstall(self) -> None:
        for owner, attr, fn in reversed(self._originals):
            setattr(owner, attr, fn)
        self._originals.clear()

    def never_called_state_changers(self) -> list[str]:
        return sorted(n for n, fn in self.targets.items() if n not in self.calls and changes_state(fn))
