"""Root pytest plugin for nbval runs (it must sit at the root to see the notebooks/ items as well as tests/): the
per-notebook wall-time budget, and ``QLAB_NOTEBOOK`` set to the notebook whose kernel is about to start (qlab.kernels
writes it to ``QLAB_KERNEL_TRACE`` when loaded: scripts/isa_matrix.py replays those notebooks without the C++
extension)."""

from __future__ import annotations

import collections
import os

import pytest

NOTEBOOK_BUDGET_S = float(os.environ.get("QLAB_NOTEBOOK_BUDGET_S", "90"))
_nb_time: dict[str, float] = collections.defaultdict(float)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    path = item.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):  # before nbval's file setup starts the notebook's kernel, which inherits it
        os.environ["QLAB_NOTEBOOK"] = path


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _nb_time[path] += report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _nb_time:
        return
    tr = terminalreporter
    tr.section("notebook wall time (budget %.0f s each)" % NOTEBOOK_BUDGET_S)
    for path, t in sorted(_nb_time.items()):
        flag = "  OVER BUDGET" if t > NOTEBOOK_BUDGET_S else ""
        tr.write_line(f"{t:6.1f} s  {path}{flag}")


def pytest_sessionfinish(session, exitstatus):
    over = {p: t for p, t in _nb_time.items() if t > NOTEBOOK_BUDGET_S}
    if over and session.exitstatus == 0:
        session.exitstatus = 1
        print(f"\nnotebooks over the {NOTEBOOK_BUDGET_S:.0f} s budget: {over}")
