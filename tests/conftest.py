"""Every test runs with qlab's public functions wrapped by tests/statecheck.py: a call that leaves the
quantized engine, a random generator, the thread count or Inductor's config changed fails the test
it happened in, and the session fails if a public function that changes state was never called."""
from __future__ import annotations

import os

import pytest
import statecheck

_monitor: statecheck.Monitor | None = None


def pytest_configure(config):
    global _monitor
    if os.environ.get("QLAB_STATECHECK", "1") != "0":
        _monitor = statecheck.Monitor().install()


@pytest.fixture(autouse=True)
def _no_leaked_state():
    seen = len(_monitor.leaks) if _monitor else 0
    yield
    if _monitor and len(_monitor.leaks) > seen:
        new = _monitor.leaks[seen:]
        pytest.fail("global state leaked by qlab: " + "; ".join(f"{name}: {', '.join(d)}" for name, d in new[:3]),
                    pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    if not _monitor or session.config.getoption("collectonly") or not session.testscollected:
        return
    missing = _monitor.never_called_state_changers()
    full_run = not session.config.getoption("keyword") and not session.config.getoption("markexpr") \
        and session.config.args in (["tests"], [str(session.config.rootpath / "tests")])
    if missing and full_run:
        print(f"\nqlab functions that change global state (through qlab.scoped) but no test called: {missing}")
        session.exitstatus = 1
    _monitor.uninstall()
