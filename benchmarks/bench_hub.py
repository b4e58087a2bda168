#!/usr/bin/env python
"""How many learners one machine serves: the workshop hub's capacity, measured (as root).

    sudo .venv/bin/python benchmarks/bench_hub.py                  # N = 1, 2, 4, 8 -> benchmarks/results/hub.json
    sudo .venv/bin/python benchmarks/bench_hub.py --learners 1 2   # fewer rounds
    .venv/bin/python benchmarks/bench_hub.py --table               # the guide's capacity table from hub.json

Starts the hub of ``deploy/jupyterhub`` (``loadtest.Hub``: the deployed configuration, one torch thread per
learner), creates learners ``qlab-learner-1`` .. ``-N`` as system users, starts their servers, then for each N
runs the heaviest notebook (by ``notebooks/timings.json``, or ``--notebook``) in N servers at once through the
Jupyter REST and kernel APIs: seconds per learner, peak resident memory per learner (all their processes),
failures. Bounded: a wall-clock cap per round (``--cap``), and a round is skipped (with the reason recorded)
when ``MemAvailable`` is below N x the largest per-learner peak measured so far (x 1.25, plus 1 GiB for the
system). Results after each round; the machine, the load before each round and the kernel cache are recorded.
It refuses to start on a busy machine (load above 0.5) unless ``--allow-busy``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy" / "jupyterhub"))

OUT = ROOT / "benchmarks" / "results" / "hub.json"
GIB = 2**30


def heaviest() -> str:
    seconds = json.loads((ROOT / "notebooks" / "timings.json").read_text())["seconds"]
    return max(seconds, key=seconds.get)


def capacity_table(rec: dict) -> str:
    """The instructor guide's table, from a recording: one row per N (docs/instructor-guide.md quotes it)."""
    m = rec["meta"]
    lines = [
        f"Measured on {m['cpu']} ({m['cores']} cores, {m['mem_total_gib']} GiB), one torch thread per learner, "
        f"notebook `{rec['notebook']}` run top to bottom by every learner at once:",
        "",
        "| learners at once | slowest learner (s) | median learner (s) | peak memory per learner (MiB) | failures |",
        "|---|---|---|---|---|",
    ]
    for r in rec["rounds"]:
        if r.get("skipped"):
            lines.append(f"| {r['learners']} | skipped: {r['skipped']} | | | |")
            continue
        secs = sorted(x["seconds"] for x in r["results"] if x["seconds"] is not None)
        mem = max(x["peak_rss_mib"] for x in r["results"])
        fails = sum(1 for x in r["results"] if x["failure"] or x["errors"])
        slow = f"{secs[-1]:.0f}" if secs else "-"
        med = f"{secs[len(secs) // 2]:.0f}" if secs else "-"
        lines.append(f"| {r['learners']} | {slow} | {med} | {mem} | {fails} |")
    return "\n".join(lines)


def sizing(rec: dict, classes=(30, 100), node_cores: int = 16, node_gib: int = 64, slowdown: float = 2.0) -> str:
    """A class on Zero to JupyterHub, on paper from the recording: cores and memory per learner, nodes.

    Cores per learner: this machine's cores over the most learners whose slowest run stayed within ``slowdown``
    x one learner alone; memory per learner: the largest peak x 1.25, rounded up to 0.5 GiB; nodes of
    ``node_cores`` cores / ``node_gib`` GiB, 4 GiB of each kept for the system.
    """
    ok = [
        r
        for r in rec["rounds"]
        if not r.get("skipped")
        and all(x["seconds"] is not None and not x["failure"] and not x["errors"] for x in r["results"])
    ]
    if not ok:
        return "No round ran cleanly: no sizing."
    alone = min(max(x["seconds"] for x in r["results"]) for r in ok if r["learners"] == min(q["learners"] for q in ok))
    within = [r for r in ok if max(x["seconds"] for x in r["results"]) <= slowdown * alone]
    n_ok = max(r["learners"] for r in within)
    cores = rec["meta"]["cores"] / n_ok
    peak = max(x["peak_rss_mib"] for r in ok for x in r["results"]) / 1024
    mem = math.ceil(peak * 1.25 * 2) / 2
    lines = [
        f"This machine ran {n_ok} learners at once with the slowest within {slowdown:g}x of one learner alone "
        f"({alone:.0f} s): {cores:g} core(s) per learner; peak memory {peak:.1f} GiB, so {mem:g} GiB per learner "
        f"(x 1.25 headroom). On Zero to JupyterHub (`singleuser.cpu.guarantee: {cores:g}`, "
        f"`singleuser.memory.guarantee: {mem:g}G`), nodes of {node_cores} cores / {node_gib} GiB:",
        "",
        "| class | cores | memory (GiB) | nodes |",
        "|---|---|---|---|",
    ]
    for n in classes:
        nodes = math.ceil(max(n * cores / node_cores, n * mem / (node_gib - 4)))
        lines.append(f"| {n} learners | {n * cores:g} | {n * mem:g} | {nodes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--notebook", default=None, help="default: the heaviest by notebooks/timings.json")
    ap.add_argument("--cap", type=float, default=1200, help="wall-clock cap per round, seconds")
    ap.add_argument("--allow-busy", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the capacity table of the recording and exit")
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args(argv)
    if args.table:
        rec = json.loads(args.out.read_text())
        print(capacity_table(rec) + "\n\n" + sizing(rec))
        return 0
    if any(n < 1 or n > 32 for n in args.learners):
        ap.error("--learners: each N must be in [1, 32]")
    if os.geteuid() != 0:
        ap.error("run as root: the hub switches to each learner's system user")
    import loadtest as lt

    from qlab import _env
    from qlab.timing import wait_for_quiet

    if not args.allow_busy:
        wait_for_quiet(0.5, timeout_s=600)  # raises if the machine stays busy
    nb = args.notebook or heaviest()
    users = [f"qlab-learner-{i}" for i in range(1, max(args.learners) + 1)]
    meta = {
        **_env.machine_info(),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "command": " ".join(["bench_hub.py", *(argv if argv is not None else sys.argv[1:])]),
        "busy_allowed": args.allow_busy,
        "threads_per_learner": 1,
    }
    rec = {"meta": meta, "notebook": nb, "rounds": []}
    state = ROOT / "build" / "hub-bench"
    shutil.rmtree(state, ignore_errors=True)
    peak_gib = 0.0
    with lt.learners(users), lt.reachable(), lt.Hub(users, state) as hub:
        tokens = {u: hub.token(u) for u in users}
        for n in args.learners:
            need = n * peak_gib * 1.25 + 1.0
            if peak_gib and lt.mem_available() / GIB < need:
                rec["rounds"].append(
                    {
                        "learners": n,
                        "skipped": f"MemAvailable {lt.mem_available() / GIB:.1f} GiB < {need:.1f} GiB needed",
                    }
                )
                continue
            spawn = {u: round(hub.start_server(u), 1) for u in users[:n] if not hub.server_alive(u)}
            time.sleep(2)
            r = lt.load_round(hub, users[:n], tokens, nb, args.cap)
            r["spawn_s"] = spawn
            rec["rounds"].append(r)
            peak_gib = max(peak_gib, *(x["peak_rss_mib"] / 1024 for x in r["results"]))
            args.out.write_text(json.dumps(rec, indent=1) + "\n")
            ok = sum(1 for x in r["results"] if not x["failure"] and not x["errors"])
            print(
                f"N={n}: {ok}/{n} ran {nb} without error, wall {r['wall_s']} s, "
                f"peak {max(x['peak_rss_mib'] for x in r['results'])} MiB per learner",
                flush=True,
            )
    meta["loadavg_after"] = round(os.getloadavg()[0], 2)
    args.out.write_text(json.dumps(rec, indent=1) + "\n")
    print(capacity_table(rec) + "\n\n" + sizing(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
