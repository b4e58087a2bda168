"""Every test runs with qlab's public functions wrapped by tests/statecheck.py: a call that leaves the
quantized engine, a random generator, the thread count or Inductor's config changed fails the test
it happened in, and the session fails if a public function that changes state was never called."""

from __future__ import annotations

import os

import pytest
import statecheck

_monitor: statecheck.Monitor | None = None


def pytest_configure(config):
    import torch._inductor.config  # noqa: F401 -- imported up front, so every test's state includes its flags

    global _monitor
    if os.environ.get("QLAB_STATECHECK", "1") != "0":
        _monitor = statecheck.Monitor().install()


def _settings() -> dict:
    """What no test may leave changed (tests draw random numbers freely: those are not compared)."""
    s = statecheck.snapshot()
    return {k: v for k, v in s.items() if k in ("engine", "threads", "inductor")}


_baseline: dict = {}


@pytest.fixture(autouse=True)
def _no_leaked_state():
    """Compared with the session's start, so a module fixture that leaks is caught too."""
    seen = len(_monitor.leaks) if _monitor else 0
    if not _baseline:
        _baseline.update(_settings())
    yield
    after = _settings()
    before = _baseline
    diff = statecheck.differences({**before, "torch_rng": b"", "numpy_rng": (0, 0), "python_rng": 0},
                                  {**after, "torch_rng": b"", "numpy_rng": (0, 0), "python_rng": 0})
    if diff:
        pytest.fail(f"this test left global state changed: {diff}", pytrace=False)
    if _monitor and len(_monitor.leaks) > seen:
        new = _monitor.leaks[seen:]
        pytest.fail(
            "global state leaked by qlab: " + "; ".join(f"{name}: {', '.join(d)}" for name, d in new[:3]), pytrace=False
        )


def pytest_sessionfinish(session, exitstatus):
    if not _monitor or session.config.getoption("collectonly") or not session.testscollected:
        return
    missing = _monitor.never_called_state_changers()
    full_run = (
        not session.config.getoption("keyword")
        and not session.config.getoption("markexpr")
        and session.config.args in (["tests"], [str(session.config.rootpath / "tests")])
    )
    if missing and full_run:
        print(f"\nqlab functions that change global state (through qlab.scoped) but no test called: {missing}")
        session.exitstatus = 1
    _monitor.uninstall()
