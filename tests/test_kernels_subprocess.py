"""qlab.kernels in fresh processes: the fallback (QLAB_NO_EXT=1, failed build), the build cache, QLAB_ISA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qlab.kernels as qk

ROOT = Path(__file__).resolve().parent.parent
NATIVE = qk.backend() == "native"

# Inputs built from fixed seeds, the same in the child process and here.
PROBLEMS = """
import torch
def problems():
    from qlab.kernels import reference  # here: importing qlab.kernels loads (or fails to build) the extension
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 3, 9, 21), dtype=torch.uint8, generator=g)
    b = torch.randint(-128, 128, (2, 3, 11, 21), dtype=torch.int8, generator=g)
    x = torch.randint(-128, 128, (7, 21), dtype=torch.int8, generator=g)
    w = torch.randint(-128, 128, (13, 21), dtype=torch.int8, generator=g)
    ws = torch.rand(13, generator=g) * 0.01 + 1e-3
    bias = torch.randn(13, generator=g)
    return [
        ("int8_bmm", (a, b, 0.02, 131, 0.01, -3, 0.05, 7, torch.uint8, True, "float")),
        ("int8_bmm", (a, b.transpose(-1, -2), 0.02, 131, 0.01, -3, 0.05, -7, torch.int8, False, "fixed")),
        ("int8_bmm", (a, b, 0.02, 131, 0.01, -3, 1.0, 0, torch.float32, True, "float")),
        ("int8_linear", (x, w, ws, bias, 0.03, -5, 0.1, 3, torch.uint8, True, "float")),
        ("int8_linear", (x, w, ws, torch.arange(13, dtype=torch.int32), 0.03, -5, 1.0, 0, torch.int32, False, "fixed")),
        ("pack_linear_weight", (w,)),
        ("int8_linear_packed", (x, reference.pack_linear_weight(w), 13, ws, bias, 0.03, -5, 0.1, 3, torch.uint8, False,
                                torch.arange(256).flip(0).to(torch.uint8), "float")),
        ("int8_linear_packed", (x, reference.pack_linear_weight(w), 13, ws, bias, 0.03, -5, 1.0, 0, torch.float32,
                                True, None, "float", torch.randn(7, 13, generator=g))),
    ]
def digests(run):
    import hashlib
    return [hashlib.sha256(run(op, args).contiguous().numpy().tobytes()).hexdigest() for op, args in problems()]
"""


def _run(code: str, **env_over) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("QLAB_NO_EXT", "QLAB_ISA")}
    env.update(env_over)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _digests_here() -> list[str]:
    ns: dict = {}
    exec(PROBLEMS, ns)
    return ns["digests"](lambda op, args: getattr(torch.ops.qlab, op)(*args))


def test_fallback_with_QLAB_NO_EXT_serves_the_same_ops():
    code = (
        PROBLEMS
        + """
import json, sys, warnings
warnings.simplefilter("error")  # QLAB_NO_EXT is a choice: no warning
import qlab, qlab.kernels as qk
assert qk.backend() == "reference" and qk.isa() == "reference" and qk.available_isas() == ["reference"]
assert "torch.utils.cpp_extension" not in sys.modules  # no build attempted
try:
    qk.set_isa("avx2")
    raise AssertionError("set_isa('avx2') should fail without the extension")
except ValueError as exc:
    assert "['auto', 'reference']" in str(exc)
op, args = problems()[0]
torch.library.opcheck(torch.ops.qlab.int8_bmm.default, args)  # the fallback is a real custom op
wrapped = qk.int8_bmm(args[0], args[1], a_scale=0.02, a_zero_point=131, b_scale=0.01, b_zero_point=-3,
                      out_scale=0.05, out_zero_point=7, transpose_b=True)
assert torch.equal(wrapped, torch.ops.qlab.int8_bmm(*args))
print(json.dumps(digests(lambda op, args: getattr(torch.ops.qlab, op)(*args))))
"""
    )
    child = json.loads(_run(code, QLAB_NO_EXT="1").stdout.strip().splitlines()[-1])
    assert child == _digests_here()  # the reference in the child == the C++ ops here


def test_failed_build_falls_back_with_one_warning(tmp_path):
    code = (
        PROBLEMS
        + """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import qlab.kernels as qk
    import qlab.kernels  # a second import: no second warning
    out = digests(lambda op, args: getattr(torch.ops.qlab, op)(*args))
msgs = [str(w.message) for w in caught if "could not build the C++ extension" in str(w.message)]
print(json.dumps({"backend": qk.backend(), "warnings": msgs, "digests": out}))
"""
    )
    # an empty cache and no compiler: the build must fail
    res = json.loads(_run(code, QLAB_CACHE_DIR=str(tmp_path), CXX="/nonexistent/c++").stdout.strip().splitlines()[-1])
    assert res["backend"] == "reference"
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "pure-PyTorch reference" in res["warnings"][0]
    assert res["digests"] == _digests_here()


@pytest.mark.skipif(not NATIVE, reason="C++ extension not built")
def test_cached_build_loads_without_compiler_and_QLAB_ISA_forces_a_path():
    code = """
import sys
from qlab.kernels.__main__ import main
status = main([])
import qlab.kernels as qk
print("isa:", qk.isa())
print("cpp_extension imported:", "torch.utils.cpp_extension" in sys.modules)
sys.exit(status)
"""
    out = _run(code, QLAB_ISA="scalar").stdout
    assert "(cached)" in out  # no recompilation ...
    assert "cpp_extension imported: False" in out  # ... not even the build machinery was imported
    assert "ISA path: scalar" in out and "isa: scalar" in out
    assert "self-check against qlab.kernels.reference: ok" in out
