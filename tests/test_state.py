"""Global state is changed only through qlab.scoped, and every public qlab call leaves it as it found it.

The dynamic half runs around every test of the session (tests/conftest.py, tests/statecheck.py): each
public function and method is wrapped and checked. Here: the static half, and proof that the check bites.
"""

from __future__ import annotations

import ast
import pathlib
import random

import numpy as np
import pytest
import statecheck
import torch

import qlab

QLAB = pathlib.Path(qlab.__file__).parent

# What only qlab/_env.py may do, as (description, test on an AST node).
FORBIDDEN = {
    "assign torch.backends.quantized.engine": lambda n: (
        isinstance(n, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "engine" for t in n.targets)
    ),
    "assign an Inductor config flag": lambda n: (
        isinstance(n, ast.Assign)
        and any(
            isinstance(t, ast.Attribute)
            and isinstance(t.value, (ast.Name, ast.Attribute))
            and "config" in ast.unparse(t.value)
            for t in n.targets
        )
    ),
}
FORBIDDEN_CALLS = {"manual_seed", "seed", "set_num_threads", "set_flush_denormal", "use_deterministic_algorithms"}


def _calls(tree):
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = ast.unparse(f.value) if isinstance(f, ast.Attribute) else ""
            yield n, name, owner


@pytest.mark.parametrize("path", sorted(QLAB.rglob("*.py")), ids=lambda p: str(p.relative_to(QLAB)))
def test_no_module_but_env_changes_global_state(path):
    if path.name == "_env.py":
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        for what, test in FORBIDDEN.items():
            assert not test(node), f"{path.name}:{node.lineno} must not {what}: use qlab.scoped"
    for node, name, owner in _calls(tree):
        # checkpoints.train_cli turns deterministic algorithms on for training, and back off afterwards
        allowed = path.name == "checkpoints.py" and name == "use_deterministic_algorithms"
        if name in FORBIDDEN_CALLS and "Generator" not in owner and not allowed:
            pytest.fail(f"{path.name}:{node.lineno} calls {owner}.{name}: use qlab.scoped (or a torch.Generator)")


def test_the_check_detects_each_kind_of_leak():
    import torch._inductor.config  # noqa: F401 -- the snapshot reads Inductor's flags once it is imported

    before = statecheck.snapshot()
    torch.rand(1)
    assert statecheck.differences(before, statecheck.snapshot()) == [
        "torch's random generator advanced or was reseeded"
    ]
    before = statecheck.snapshot()
    np.random.rand()
    random.random()
    assert len(statecheck.differences(before, statecheck.snapshot())) == 2
    before = statecheck.snapshot()
    with qlab.scoped(engine="fbgemm", threads=1, inductor={"freezing": True}):
        inside = statecheck.snapshot()
    diff = statecheck.differences(before, inside)
    assert any(d.startswith("engine") for d in diff) and any(d.startswith("threads") for d in diff), diff
    assert any("freezing" in d for d in diff), (diff, before.get("inductor", {}).get("freezing"))
    assert statecheck.differences(before, statecheck.snapshot()) == []  # scoped restored all of it


def test_the_monitor_names_a_leaking_function(monkeypatch):
    def leaky():
        torch.manual_seed(1)

    mon = statecheck.Monitor()
    wrapped = mon._wrap("qlab.fake.leaky", leaky)
    state = torch.get_rng_state()
    try:
        wrapped()
    finally:
        torch.set_rng_state(state)
    assert mon.calls == {"qlab.fake.leaky": 1} and mon.leaks[0][0] == "qlab.fake.leaky"


def test_discovery_finds_the_public_functions_and_those_that_change_state():
    found = statecheck.public_callables()
    assert "qlab.primitives.quantize" in found and "qlab.flows.OnEngine.forward" in found
    assert all(not k.split(".")[-1].startswith("_") or k.endswith(("__init__", "__call__")) for k in found)
    changers = {k for k, fn in found.items() if statecheck.changes_state(fn)}
    assert {"qlab.flows.ptq", "qlab.models.evaluate", "qlab.pt2e.lower"} <= changers
    assert "qlab.primitives.quantize" not in changers


def test_engine_sets_only_the_engine_and_restores_it_even_on_error():
    before = torch.backends.quantized.engine
    other = "fbgemm" if before != "fbgemm" else "x86"
    rng = torch.random.get_rng_state()
    with qlab.engine(other):
        assert torch.backends.quantized.engine == other
    assert torch.backends.quantized.engine == before and torch.equal(torch.random.get_rng_state(), rng)
    with pytest.raises(RuntimeError, match="inside"), qlab.engine(other):
        raise RuntimeError("inside")
    assert torch.backends.quantized.engine == before
    with pytest.raises(ValueError, match="engine must be one of"):
        qlab.engine("tpu")


def test_setup_honours_qlab_max_threads(monkeypatch):
    monkeypatch.setenv("QLAB_MAX_THREADS", "1")
    with qlab.scoped():
        qlab.setup(threads=2, quiet=True)
        assert torch.get_num_threads() == 1
    monkeypatch.setenv("QLAB_MAX_THREADS", "none")
    with qlab.scoped(), pytest.raises(ValueError, match="QLAB_MAX_THREADS must be a positive integer"):
        qlab.setup(quiet=True)
