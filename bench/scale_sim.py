"""Scheduling throughput on a simulated cluster: N fake nodes and T tasks on a real manager.

The manager is a real `shoald` (fake executor, drained so that no task lands on it) on
127.0.0.1, its API on a unix socket in a temporary directory. The fake nodes are real
`shoal.node.Node`s over the fake executor (bench/scale_sim_agents.py), several processes of
them with one asyncio loop each: every node joins with the worker token (its own
certificate) and holds its Session/Heartbeat/Assignments/UpdateTaskStatus streams to the
leader over gRPC with mTLS. Then S replicated services of T/S replicas are created through
the HTTP API, and the benchmark measures, from the first create:

- assigned  the last task reached its node (the fake nodes note when each task's first
            `prepare` was called; this includes the dispatcher's delivery), so tasks
            assigned per second = T / assigned; `scheduled` is the end of the scheduler's
            last pass (its log), `created` the orchestrator's last task (CreatedAt);
- running   the last task's RUNNING status was committed (its UpdatedAt, read once at the
            end); `GET /services?status=true`, polled every --poll s, only tells when all
            are running. The status report lag is UpdatedAt minus the node's own
            Status.Timestamp.

Also: the time for the N nodes to join and be Ready, the manager's CPU and RSS (from
/proc/<pid>) while joining, idle with N sessions, and during the run; the fake nodes' CPU;
the CPU the rest of the machine used meanwhile (other work skews the figures).
Baselines (issue 3): Docker's scheduler alone, in memory, about 4,400 tasks/s (swarmkit,
100k tasks on 1k nodes); Nomad placed 1,500-3,750 containers/s.

    .venv/bin/python bench/scale_sim.py                 # 1,000 nodes, 10,000 tasks
    .venv/bin/python bench/scale_sim.py --quick         # 50 nodes, 500 tasks, < 60 s
    .venv/bin/python bench/scale_sim.py --nodes 200 --tasks 2000 --procs 2

Results: a table on stdout and bench/results/scale_sim.json (or --json PATH). Traffic stays on
loopback; every process it starts is stopped by PID, and the temporary directory removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from scale_sim_cluster import Cluster, Watch, takeover  # noqa: E402
from scale_sim_phases import join_phase, run_phase, task_facts  # noqa: E402
from scale_sim_procs import (  # noqa: E402
    LOOPBACK,
    REPO,
    AgentProcs,
    Sampler,
    loadavg,
    print_top_frames,
    start_py_spy,
    stop_py_spy,
)
from scale_sim_report import summarize, table  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "scale_sim.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--services", type=int, default=10, help="tasks are split over them")
    p.add_argument("--procs", type=int, default=4, help="fake-node processes")
    p.add_argument("--managers", type=int, default=1, choices=(1, 3),
                   help="3: one Raft group, the fake nodes join through all three")
    p.add_argument("--pause-leader", type=float, default=0.0, metavar="SECONDS",
                   help="SIGSTOP the leader this long, 1 s into the burst (with --managers 3)")
    p.add_argument("--takeover", action="store_true",
                   help="after the run, SIGKILL the leader and time the next leader's takeover")
    p.add_argument("--join-concurrency", type=int, default=16, help="joins in flight per proc")
    p.add_argument("--nice", type=int, default=0,
                   help="run the fake-node processes this much nicer than the managers (in a "
                        "real swarm the nodes are other machines; on 2 shared cores the 5,000 "
                        "simulated nodes otherwise take the managers' CPU)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    p.add_argument("--watch", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between samples of the managers' Raft progress and of the "
                        "nodes seen Down")
    p.add_argument("--idle", type=float, default=5.0,
                   help="seconds to measure the manager idle with all sessions open")
    p.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    p.add_argument("--quick", action="store_true", help="50 nodes, 500 tasks, 2 processes")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for the 1-min load average to fall below 1")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--py-spy", type=Path, default=None, metavar="PATH",
                   help="record the leader with py-spy (raw format) during the run phase and "
                        "print its top self-time frames")
    p.add_argument("--flame", type=Path, default=None, metavar="PATH.svg",
                   help="record the leader with py-spy as a flame graph during the run phase")
    p.add_argument("--top-frames", type=Path, default=None, metavar="RAW",
                   help="only print the top 15 self-time frames of a py-spy raw file")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.tasks, args.services, args.procs = 50, 500, 5, 2
        args.idle = min(args.idle, 2.0)
    args.procs = max(1, min(args.procs, args.nodes))
    return args


def start_spies(pid: int, args: argparse.Namespace) -> list[Any]:
    spies = []
    if args.py_spy:
        spies.append(start_py_spy(pid, args.py_spy, "raw"))
    if args.flame:
        spies.append(start_py_spy(pid, args.flame, "flamegraph"))
    return spies


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a stopped run) unwinds like an error, so the managers and fake nodes are stopped
    # (they outlived a run stopped with the default action).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.top_frames:
        print_top_frames(args.top_frames)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.wait_quiet:
        deadline = time.monotonic() + args.wait_quiet
        while loadavg() >= 1.0 and time.monotonic() < deadline:
            time.sleep(5.0)
    args.loadavg_at_start = loadavg()
    if args.loadavg_at_start >= 2.0:
        log(f"warning: the machine is busy (load average {args.loadavg_at_start:.1f}); "
            "the figures will be lower than on a quiet machine")
    tmp = Path(tempfile.mkdtemp(prefix="shoal-scale-"))
    cluster = Cluster(tmp, args.managers)
    agents = AgentProcs(tmp, args.nodes, args.procs, args.join_concurrency, args.nice)
    sampler: Sampler | None = None
    watch = Watch(cluster, args.nodes, args.watch)
    failed = True  # keep the temporary directory (the logs) of a run that failed
    try:
        log(f"managers: {args.managers} shoald on {LOOPBACK}, state in {tmp}")
        cluster.start(log)
        mgr = cluster.leader()
        assert mgr.proc is not None
        log(f"leader: {mgr.name} (pid {mgr.proc.pid})")
        sampler = Sampler({"manager": [mgr.proc.pid], "agents": []})
        sampler.start()
        watch.start()
        log(f"joining {args.nodes} fake nodes in {args.procs} processes")
        join = join_phase(cluster, mgr, agents, sampler, args.timeout, log)
        log(f"idle {args.idle:.0f} s with {args.nodes} sessions open")
        idle = (time.time(), time.time() + args.idle)
        time.sleep(args.idle + sampler.interval)
        log(f"creating {args.services} services, {args.tasks} tasks")
        spies = start_spies(mgr.proc.pid, args)
        try:
            run = run_phase(cluster, mgr, agents, args.tasks, args.services, args.poll,
                            args.timeout, log, args.pause_leader)
        finally:
            for spy in spies:
                stop_py_spy(spy)
        time.sleep(max(2 * sampler.interval, args.watch))  # a watch sample after the end
        facts = task_facts(cluster, mgr, run["start"])
        end = run["start"] + run["running_s"]
        health = watch.summary(join["start"], end)
        taken = None
        if args.takeover:
            killed_at = time.time()
            taken = takeover(cluster, args.nodes, args.timeout, log)
            time.sleep(args.watch)  # a watch sample after the new leader has everyone
            taken["max_down"] = watch.summary(killed_at, time.time())["max_down"]
            taken["ever_down_by_then"] = len(watch.ever_down)
        times = agents.stop()
        if taken is not None:  # the takeover's own service is not the run's
            for key in ("prepared", "started"):
                times[key] = {k: t for k, t in times[key].items() if t < killed_at}
        result = summarize(args, join, run, facts, times, mgr.scheduler_passes(), sampler,
                           idle)
        result["managers"] = {"count": args.managers, "leader": mgr.name,
                              "start_attempts": cluster.attempts,
                              "read_errors": cluster.read_errors,
                              "write_errors": cluster.write_errors, **health}
        if taken is not None:
            result["takeover"] = taken
        if "pause" in run:
            result["pause"] = run["pause"]
        failed = False
    finally:
        watch.stop()
        if sampler is not None:
            sampler.stop()
        try:
            agents.stop()
        finally:
            cluster.stop()
        if args.keep or failed:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    if args.py_spy:
        print_top_frames(args.py_spy)
    if args.flame:
        print(f"flame graph: {args.flame}")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
