"""Manager CPU while idle (issue 7): a real shoald manager holding 1,000 running tasks on 100
fake nodes, doing nothing, against the same manager and nodes with no task.

The setup is bench/scale_sim.py's: one real `shoald` (fake executor, drained) on 127.0.0.1,
and fake nodes (real `shoal.node.Node`s over gRPC+mTLS, bench/scale_sim_agents.py) that
join with the worker token and hold their sessions and heartbeats. Then:

  0. the manager alone (no node): --settle s of rest, then --idle s measured: its floor;
  1. all nodes ready, --settle s of rest, then --idle s measured: the baseline (0 tasks);
  2. --tasks replicas in --services services created through the HTTP API, all running,
     --settle s of rest, then --idle s measured again.

CPU is the manager process's utime + stime from /proc/<pid>/stat (all its threads, sampled
every 0.5 s), as a percentage of one core; the ratio is loaded over baseline. The same for
the fake nodes' processes and for the rest of the machine (other work skews the figures).
The goal is a near-zero idle manager: no whole-store copies on timers, no work per task
when nothing changes.

    .venv/bin/python bench/idle_cpu.py                 # 100 nodes, 1,000 tasks, 30 s idle
    .venv/bin/python bench/idle_cpu.py --quick         # 20 nodes, 100 tasks, 5 s idle
    .venv/bin/python bench/idle_cpu.py --py-spy /tmp/idle.txt   # profile the loaded idle

No root needed: everything is on loopback. Results: a table on stdout and
bench/results/idle_cpu.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from scale_sim_cluster import Cluster  # noqa: E402
from scale_sim_phases import join_phase, run_phase  # noqa: E402
from scale_sim_procs import (  # noqa: E402
    REPO,
    AgentProcs,
    Sampler,
    loadavg,
    start_py_spy,
    stop_py_spy,
)

DEFAULT_JSON = REPO / "bench" / "results" / "idle_cpu.json"


def idle_window(sampler: Sampler, keys: list[str], seconds: float) -> dict[str, Any]:
    """Wait `seconds` doing nothing; the CPU of each key meanwhile."""
    start = time.time()
    time.sleep(seconds + 2 * sampler.interval)  # a sample on each side of the window
    end = start + seconds
    out: dict[str, Any] = {k: sampler.window(start, end, k) for k in keys}
    out["others_cpu_pct"] = sampler.others(start, end)
    out["seconds"] = seconds
    return out


def measure(cluster: Cluster, agents: AgentProcs, sampler: Sampler,
            args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    mgr = cluster.managers[0]
    keys = ["manager", "agents"]
    log(f"manager alone: resting {args.settle:.0f} s, then {args.idle:.0f} s idle")
    time.sleep(args.settle)
    alone = idle_window(sampler, keys, args.idle)
    join = join_phase(cluster, mgr, agents, sampler, args.timeout, log)
    log(f"{args.nodes} nodes ready in {join['ready_s']:.1f} s; resting {args.settle:.0f} s, "
        f"then {args.idle:.0f} s idle with no task")
    time.sleep(args.settle)
    empty = idle_window(sampler, keys, args.idle)
    log(f"creating {args.tasks} tasks in {args.services} services")
    run = run_phase(cluster, mgr, agents, args.tasks, args.services, poll=0.5, timeout=args.timeout,
                    log=log)
    log(f"{args.tasks} tasks running after {run['running_s']:.1f} s; resting "
        f"{args.settle:.0f} s, then {args.idle:.0f} s idle")
    time.sleep(args.settle)
    assert mgr.proc is not None
    spy = start_py_spy(mgr.proc.pid, args.py_spy) if args.py_spy else None
    try:
        loaded = idle_window(sampler, keys, args.idle)
    finally:
        if spy is not None:
            stop_py_spy(spy)
    agents.check()
    return {"join": {k: v for k, v in join.items() if k != "start"},
            "run": {k: v for k, v in run.items() if k != "start"},
            "no_nodes": alone, "no_tasks": empty, "tasks": loaded}


def figures(m: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    base, loaded = m["no_tasks"]["manager"]["cpu_pct"], m["tasks"]["manager"]["cpu_pct"]
    return {"nodes": args.nodes, "tasks": args.tasks, "idle_s": args.idle,
            "manager_cpu_pct_no_nodes": m["no_nodes"]["manager"]["cpu_pct"],
            "manager_cpu_pct_no_tasks": base, "manager_cpu_pct_tasks": loaded,
            # a 0 % baseline (below the 10 ms clock tick) would divide by zero
            "ratio": round(loaded / base, 2) if base else None,
            "manager_rss_mib_tasks": m["tasks"]["manager"]["rss_peak_mib"],
            "fake_nodes_cpu_pct": [m["no_tasks"]["agents"]["cpu_pct"],
                                   m["tasks"]["agents"]["cpu_pct"]],
            "others_cpu_pct": [m["no_tasks"]["others_cpu_pct"], m["tasks"]["others_cpu_pct"]]}


def table(f: dict[str, Any]) -> str:
    ratio = "n/a (0 % baseline)" if f["ratio"] is None else f"{f['ratio']:.2f}"
    rows = [("manager idle", "CPU % of one core", "CPU s"),
            ("alone (no node)", f"{f['manager_cpu_pct_no_nodes']:.2f}",
             f"{f['manager_cpu_pct_no_nodes'] * f['idle_s'] / 100:.2f}"),
            ("0 tasks", f"{f['manager_cpu_pct_no_tasks']:.2f}",
             f"{f['manager_cpu_pct_no_tasks'] * f['idle_s'] / 100:.2f}"),
            (f"{f['tasks']:,} tasks", f"{f['manager_cpu_pct_tasks']:.2f}",
             f"{f['manager_cpu_pct_tasks'] * f['idle_s'] / 100:.2f}")]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{f['nodes']} fake nodes (except the first row), {f['idle_s']:.0f} s idle per row"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"ratio (tasks / 0 tasks): {ratio}; manager RSS {f['manager_rss_mib_tasks']:.0f} "
              "MiB",
              f"fake nodes CPU %: {f['fake_nodes_cpu_pct'][0]:.1f} / "
              f"{f['fake_nodes_cpu_pct'][1]:.1f}; rest of the machine CPU %: "
              f"{f['others_cpu_pct'][0]:.1f} / {f['others_cpu_pct'][1]:.1f}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--services", type=int, default=10, help="tasks are split over them")
    p.add_argument("--procs", type=int, default=2, help="fake-node processes")
    p.add_argument("--idle", type=float, default=30.0, help="seconds measured per row")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds of rest before each measurement (status reports, timers)")
    p.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    p.add_argument("--quick", action="store_true", help="20 nodes, 100 tasks, 5 s idle")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--py-spy", type=Path, default=None, metavar="PATH",
                   help="record the manager with py-spy (raw format) during the loaded idle")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.tasks, args.services = 20, 100, 2
        args.idle, args.settle = 5.0, 2.0
    args.procs = max(1, min(args.procs, args.nodes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-idle-"))
    cluster = Cluster(tmp, 1)  # one manager
    mgr = cluster.managers[0]
    agents = AgentProcs(tmp, args.nodes, args.procs, concurrency=16)
    sampler: Sampler | None = None
    try:
        cluster.start(log)
        assert mgr.proc is not None
        sampler = Sampler({"manager": [mgr.proc.pid], "agents": []})
        sampler.start()
        measured = measure(cluster, agents, sampler, args, log)
    finally:
        if sampler is not None:
            sampler.stop()
        try:
            agents.stop()
        finally:
            cluster.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "idle_cpu", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_1m": {"before": load_before, "after": loadavg()}},
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "figures": figures(measured, args), **measured}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["figures"]))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
