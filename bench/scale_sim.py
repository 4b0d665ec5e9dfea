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
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from scale_sim_procs import (  # noqa: E402
    LOOPBACK,
    REPO,
    AgentProcs,
    ManagerProc,
    Sampler,
    loadavg,
    start_py_spy,
    stop_py_spy,
    wait_for,
)

from shoal.client import Client  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "scale_sim.json"
IMAGE = "shoal/busybox:latest"
SWARMKIT_TASKS_PER_S = 4400.0
NOMAD_TASKS_PER_S = (1500.0, 3750.0)

# ---- the phases ------------------------------------------------------------------------

def count_ready(client: Client, manager_id: str) -> int:
    return sum(1 for n in client.get("/nodes")
               if n["ID"] != manager_id and n["Status"]["State"] == "ready")


def join_phase(mgr: ManagerProc, agents: AgentProcs, sampler: Sampler, timeout: float,
               log: Any) -> dict[str, Any]:
    start = time.time()
    agents.start(mgr.remote, mgr.worker_token())
    sampler.pids["agents"] = agents.pids()
    ready = 0

    def all_ready() -> bool:
        nonlocal ready
        agents.check()
        ready = count_ready(mgr.client, mgr.node_id)
        return ready >= agents.nodes

    last = -1
    deadline = time.monotonic() + timeout
    while not all_ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready} of {agents.nodes} nodes ready after {timeout} s")
        if ready != last:
            log(f"  {ready}/{agents.nodes} nodes ready ({time.time() - start:.1f} s)")
            last = ready
        time.sleep(1.0)
    ready_s = time.time() - start
    joins = wait_for(agents.joined, 30.0, "the fake-node processes to report their joins")
    return {"start": start, "ready_s": round(ready_s, 2),
            "nodes_per_s": round(agents.nodes / ready_s, 1),
            "certificates_s": round(max(j["t"] for j in joins) - start, 2),
            "failed_joins": sum(j["failed"] for j in joins)}


def create_services(client: Client, tasks: int, services: int) -> list[str]:
    ids = []
    per, extra = divmod(tasks, services)
    for i in range(services):
        replicas = per + (1 if i < extra else 0)
        resp = client.post("/services/create", {
            "Name": f"sim{i:02d}", "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
            "Mode": {"Replicated": {"Replicas": replicas}}})
        ids.append(resp["ID"])
    return ids


def run_phase(mgr: ManagerProc, agents: AgentProcs, tasks: int, services: int, poll: float,
              timeout: float, log: Any) -> dict[str, Any]:
    start = time.time()
    create_services(mgr.client, tasks, services)
    created_call_s = time.time() - start
    running, polls, last_log = 0, 0, 0.0
    deadline = time.monotonic() + timeout
    while running < tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {running} of {tasks} tasks running after {timeout} s")
        time.sleep(poll)
        agents.check()
        running = sum(s["ServiceStatus"]["RunningTasks"]
                      for s in mgr.client.get("/services", status="true")
                      if s["Spec"]["Name"].startswith("sim"))
        polls += 1
        if time.time() - last_log > 5:
            log(f"  {running}/{tasks} tasks running ({time.time() - start:.1f} s)")
            last_log = time.time()
    return {"start": start, "running_s": round(time.time() - start, 2),
            "create_calls_s": round(created_call_s, 3), "polls": polls}


def task_facts(client: Client, manager_id: str, start: float) -> dict[str, Any]:
    """From one GET /tasks at the end: where the tasks are and when the last was created."""
    tasks = client.get("/tasks")
    per_node: dict[str, int] = {}
    for t in tasks:
        per_node[t.get("NodeID", "")] = per_node.get(t.get("NodeID", ""), 0) + 1
    created = max(parse_ts(t["CreatedAt"]) for t in tasks) if tasks else start
    # UpdatedAt: when the last write of the task (its RUNNING status) was committed;
    # Status.Timestamp: when its node saw it running.
    committed = sorted(parse_ts(t["UpdatedAt"]) - start for t in tasks)
    lag = sorted(parse_ts(t["UpdatedAt"]) - parse_ts(t["Status"]["Timestamp"]) for t in tasks)
    return {"tasks_listed": len(tasks),
            "running_committed_p50_s": round(percentile(committed, 0.5), 2),
            "running_committed_s": round(committed[-1], 2) if committed else 0.0,
            "report_lag_p50_s": round(percentile(lag, 0.5), 3),
            "report_lag_p99_s": round(percentile(lag, 0.99), 3),
            "report_lag_max_s": round(lag[-1], 3) if lag else 0.0,
            "running": sum(1 for t in tasks if t["Status"]["State"] == "running"),
            "on_manager": per_node.get(manager_id, 0), "nodes_used": len(per_node),
            "per_node_min": min(per_node.values(), default=0),
            "per_node_max": max(per_node.values(), default=0),
            "created_s": round(created - start, 2)}


def percentile(values: list[float], q: float) -> float:
    """Of sorted values (nearest rank)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def parse_ts(value: str) -> float:
    base, _, frac = value.rstrip("Z").partition(".")
    dt = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    return dt.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


# ---- results ---------------------------------------------------------------------------

def summarize(args: argparse.Namespace, join: dict[str, Any], run: dict[str, Any],
              facts: dict[str, Any], times: dict[str, Any],
              passes: list[tuple[float, int]], sampler: Sampler,
              idle: tuple[float, float]) -> dict[str, Any]:
    start = run["start"]
    prepared, started = times["prepared"].values(), times["started"].values()
    assigned_s = max(prepared) - start if prepared else 0.0
    run_passes = [(t, n) for t, n in passes if t >= start]
    scheduled_s = run_passes[-1][0] - start if run_passes else 0.0
    running_s = facts["running_committed_s"]  # the last RUNNING commit (the poll: coarser)
    end = start + run["running_s"]
    assigned_per_s = args.tasks / assigned_s if assigned_s else 0.0
    result = {
        "config": {"nodes": args.nodes, "tasks": args.tasks, "services": args.services,
                   "procs": args.procs, "poll_s": args.poll, "quick": args.quick,
                   "cpus": os.cpu_count(), "python": platform.python_version()},
        "join": {k: v for k, v in join.items() if k != "start"},
        "run": {"created_s": facts["created_s"], "scheduled_s": round(scheduled_s, 2),
                "assigned_s": round(assigned_s, 2), "running_s": running_s,
                "running_p50_s": facts["running_committed_p50_s"],
                "running_seen_by_poll_s": run["running_s"],
                "last_container_started_s": round(max(started) - start, 2) if started else 0,
                "tasks_seen_by_nodes": len(times["prepared"]),
                "assigned_per_s": round(assigned_per_s, 1),
                "running_per_s": round(args.tasks / running_s, 1) if running_s else 0.0,
                "status_report_lag_p50_s": facts["report_lag_p50_s"],
                "status_report_lag_p99_s": facts["report_lag_p99_s"],
                "status_report_lag_max_s": facts["report_lag_max_s"],
                "scheduler_passes": len(run_passes),
                "largest_pass": max((n for _, n in run_passes), default=0),
                "create_calls_s": run["create_calls_s"], "status_polls": run["polls"]},
        "placement": {k: v for k, v in facts.items()
                      if not k.startswith(("created", "running_", "report_"))},
        "manager": {"join": sampler.window(join["start"], start, "manager"),
                    "idle": sampler.window(idle[0], idle[1], "manager"),
                    "run": sampler.window(start, end, "manager")},
        "machine": {"loadavg_1m_at_start": args.loadavg_at_start,
                    "other_cpu_pct_join": sampler.others(join["start"], start),
                    "other_cpu_pct_run": sampler.others(start, end)},
        "fake_nodes": {"join": sampler.window(join["start"], start, "agents"),
                       "run": sampler.window(start, end, "agents"),
                       "agent_restarts": times["agent_restarts"]},
        "baselines": {"swarmkit_scheduler_in_memory_tasks_per_s": SWARMKIT_TASKS_PER_S,
                      "nomad_containers_per_s": list(NOMAD_TASKS_PER_S)},
        "ratios": ratios(assigned_per_s, args.tasks / running_s if running_s else 0.0),
    }
    return result


def ratios(assigned_per_s: float, running_per_s: float) -> dict[str, float]:
    """Our rates over the baselines' (Nomad: over its lowest and its highest figure)."""
    out = {}
    for name, rate in (("assigned", assigned_per_s), ("running", running_per_s)):
        out[f"{name}_vs_swarmkit"] = round(rate / SWARMKIT_TASKS_PER_S, 3)
        out[f"{name}_vs_nomad_low"] = round(rate / NOMAD_TASKS_PER_S[0], 3)
        out[f"{name}_vs_nomad_high"] = round(rate / NOMAD_TASKS_PER_S[1], 3)
    return out


def table(r: dict[str, Any]) -> str:
    c, j, run, ratio = r["config"], r["join"], r["run"], r["ratios"]
    m = r["manager"]
    lo, hi = NOMAD_TASKS_PER_S

    def versus(name: str) -> tuple[str, str]:
        return (f"x{ratio[name + '_vs_swarmkit']:.2f}",
                f"x{ratio[name + '_vs_nomad_high']:.2f}-x{ratio[name + '_vs_nomad_low']:.2f}")

    rows = [
        ("figure", "Shoal", f"/ swarmkit {SWARMKIT_TASKS_PER_S:,.0f}/s",
         f"/ Nomad {lo:,.0f}-{hi:,.0f}/s"),
        ("tasks assigned/s", f"{run['assigned_per_s']:,.0f}", *versus("assigned")),
        ("tasks running/s", f"{run['running_per_s']:,.0f}", *versus("running")),
        ("all assigned (s)", f"{run['assigned_s']:.1f}", "", ""),
        ("all running (s)", f"{run['running_s']:.1f}", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{c['nodes']:,} nodes, {c['tasks']:,} tasks in {c['services']} services "
             f"({c['procs']} fake-node processes, {c['cpus']} CPUs)"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        f"tasks created by {run['created_s']:.1f} s, last scheduler pass done at "
        f"{run['scheduled_s']:.1f} s ({run['scheduler_passes']} passes), last task at its "
        f"node at {run['assigned_s']:.1f} s, half running at {run['running_p50_s']:.1f} s, all "
        f"at {run['running_s']:.1f} s (status report lag p50 "
        f"{run['status_report_lag_p50_s']:.2f} s, p99 {run['status_report_lag_p99_s']:.2f} s)",
        f"join: {c['nodes']:,} nodes ready in {j['ready_s']:.1f} s ({j['nodes_per_s']:.0f}/s; "
        f"certificates by {j['certificates_s']:.1f} s, {j['failed_joins']} failed joins)",
        f"manager CPU (% of one core): join {m['join']['cpu_pct']:.0f}, idle with "
        f"{c['nodes']:,} sessions {m['idle']['cpu_pct']:.0f}, run {m['run']['cpu_pct']:.0f}; "
        f"peak RSS {max(w['rss_peak_mib'] for w in m.values()):.0f} MiB",
        f"fake nodes CPU (% of one core): join {r['fake_nodes']['join']['cpu_pct']:.0f}, "
        f"run {r['fake_nodes']['run']['cpu_pct']:.0f}",
        f"other load on the machine (% of one core): join "
        f"{r['machine']['other_cpu_pct_join']:.0f}, run {r['machine']['other_cpu_pct_run']:.0f}"
        f" (1-min load average {r['machine']['loadavg_1m_at_start']:.1f} at the start)",
    ]
    if r["fake_nodes"]["agent_restarts"]:
        lines.append(f"WARNING: {r['fake_nodes']['agent_restarts']} fake nodes were restarted "
                     "because their agent ended after losing its session (see "
                     "bench/scale_sim_agents.py)")
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--services", type=int, default=10, help="tasks are split over them")
    p.add_argument("--procs", type=int, default=4, help="fake-node processes")
    p.add_argument("--join-concurrency", type=int, default=16, help="joins in flight per proc")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    p.add_argument("--idle", type=float, default=5.0,
                   help="seconds to measure the manager idle with all sessions open")
    p.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    p.add_argument("--quick", action="store_true", help="50 nodes, 500 tasks, 2 processes")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for the 1-min load average to fall below 1")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--py-spy", type=Path, default=None, metavar="PATH",
                   help="record the manager with py-spy (raw format) during the run phase")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.tasks, args.services, args.procs = 50, 500, 5, 2
        args.idle = min(args.idle, 2.0)
    args.procs = max(1, min(args.procs, args.nodes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

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
    mgr = ManagerProc(tmp)
    agents = AgentProcs(tmp, args.nodes, args.procs, args.join_concurrency)
    sampler: Sampler | None = None
    try:
        log(f"manager: shoald on {LOOPBACK}, state in {tmp}")
        mgr.start()
        assert mgr.proc is not None
        sampler = Sampler({"manager": [mgr.proc.pid], "agents": []})
        sampler.start()
        log(f"joining {args.nodes} fake nodes in {args.procs} processes")
        join = join_phase(mgr, agents, sampler, args.timeout, log)
        log(f"idle {args.idle:.0f} s with {args.nodes} sessions open")
        idle = (time.time(), time.time() + args.idle)
        time.sleep(args.idle + sampler.interval)
        log(f"creating {args.services} services, {args.tasks} tasks")
        spy = start_py_spy(mgr.proc.pid, args.py_spy) if args.py_spy else None
        try:
            run = run_phase(mgr, agents, args.tasks, args.services, args.poll, args.timeout,
                            log)
        finally:
            if spy is not None:
                stop_py_spy(spy)
        time.sleep(2 * sampler.interval)
        facts = task_facts(mgr.client, mgr.node_id, run["start"])
        times = agents.stop()
        result = summarize(args, join, run, facts, times, mgr.scheduler_passes(), sampler,
                           idle)
    finally:
        if sampler is not None:
            sampler.stop()
        try:
            agents.stop()
        finally:
            mgr.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
