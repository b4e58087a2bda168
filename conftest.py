"""Root pytest plugin: the per-notebook wall-time budget for nbval runs (it must sit at the root
to see the notebooks/ items as well as tests/)."""

from __future__ import annotations

import collections
import os

NOTEBOOK_BUDGET_S = float(os.environ.get("QLAB_NOTEBOOK_BUDGET_S", "90"))
_nb_time: dict[str, float] = collections.defaultdict(float)


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
