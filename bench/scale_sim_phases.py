"""The phases of bench/scale_sim.py, also run by bench/api_load.py and bench/idle_cpu.py:
the fake nodes join, services of T tasks are created (with, on request, the leader paused
in the burst until another manager is elected), and what the tasks say at the end."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from scale_sim_cluster import Cluster, scrape
from scale_sim_procs import AgentProcs, ManagerProc, Sampler, wait_for
from waiting import wall

from shoal.client import APIError, Client

IMAGE = "shoal/busybox:latest"
ELECTION_WAIT = 15.0  # seconds a paused leader stays paused, past --pause-leader, for an election

def count_ready(client: Client, manager_ids: set[str]) -> int:
    return sum(1 for n in client.get("/nodes")
               if n["ID"] not in manager_ids and n["Status"]["State"] == "ready")


def join_phase(cluster: Cluster, mgr: ManagerProc, agents: AgentProcs, sampler: Sampler,
               timeout: float, log: Any) -> dict[str, Any]:
    start = time.time()
    agents.start(cluster.remotes(), mgr.worker_token())
    sampler.pids["agents"] = agents.pids()
    ready = 0

    def all_ready() -> bool:
        nonlocal ready
        agents.check()
        ready = count_ready(mgr.client, cluster.ids())
        # A node that gave up joining is never ready: counted in failed_joins, not waited for.
        gave_up = sum(j["failed"] for j in agents.joined())
        return ready >= agents.nodes - gave_up

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


def create_services(cluster: Cluster, client: Client, tasks: int, services: int,
                    timeout: float = 60.0) -> list[str]:
    """Create the services; a create whose outcome was unknown (the leader lost its quorum
    meanwhile) is sent again, and 409 then means the first one committed."""
    ids = []
    per, extra = divmod(tasks, services)
    for i in range(services):
        replicas = per + (1 if i < extra else 0)
        name = f"sim{i:02d}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = client.post("/services/create", {
                    "Name": name, "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
                    "Mode": {"Replicated": {"Replicas": replicas}}})
                ids.append(resp["ID"])
                break
            except APIError as err:
                cluster.write_errors += 1
                if err.status == 409:
                    ids.append(client.get(f"/services/{name}")["ID"])
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return ids


def pause_later(pid: int, after: float, pause: float, log: Any,
                elected: Callable[[], bool] | None = None
                ) -> tuple[threading.Thread, dict[str, Any]]:
    """SIGSTOP `pid` `after` seconds from now for `pause` seconds (a leader that stalls in
    the burst: its followers elect another while assignments and reports are in flight).
    `elected()`, if given, says whether another manager took a newer term: the pause then
    lasts until it did (at most ELECTION_WAIT s more), so that the fault always includes
    the election it is meant to cause, however loaded the machine. The dict it returns
    says, once the thread has ended, how long the pause lasted and whether another manager
    was elected meanwhile (the watch's samples can miss a term that began just before the
    run ended)."""
    outcome: dict[str, Any] = {"elected": False}

    def run() -> None:
        time.sleep(after)
        log(f"pausing the leader (pid {pid}) for {pause:g} s")
        os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        try:
            time.sleep(pause)
            deadline = time.monotonic() + ELECTION_WAIT
            while elected is not None and time.monotonic() < deadline:
                if elected():
                    outcome["elected"] = True
                    break
                time.sleep(0.2)
        finally:
            os.kill(pid, signal.SIGCONT)
            outcome["paused_s"] = round(time.monotonic() - began, 2)
            log(f"resumed the leader after {outcome['paused_s']:.1f} s")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def elected_after(cluster: Cluster, mgr: ManagerProc) -> Callable[[], bool]:
    """Whether a manager other than `mgr` shows a Raft term above `mgr`'s current one."""
    term = scrape(mgr).get("shoal_raft_term", 0.0)

    def elected() -> bool:
        return any(scrape(m).get("shoal_raft_term", 0.0) > term
                   for m in cluster.live() if m is not mgr)
    return elected


def run_phase(cluster: Cluster, mgr: ManagerProc, agents: AgentProcs, tasks: int,
              services: int, poll: float, timeout: float, log: Any,
              pause_leader: float = 0.0) -> dict[str, Any]:
    start = time.time()
    paused = None
    if pause_leader and mgr.proc is not None:
        paused = pause_later(mgr.proc.pid, 1.0, pause_leader, log, elected_after(cluster, mgr))
    create_services(cluster, mgr.client, tasks, services)
    created_call_s = time.time() - start
    running, polls, last_log = 0, 0, 0.0
    deadline = time.monotonic() + timeout
    while running < tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {running} of {tasks} tasks running after {timeout} s")
        time.sleep(poll)
        agents.check()
        running = sum(s["ServiceStatus"]["RunningTasks"]
                      for s in cluster.get(mgr, "/services", status="true")
                      if s["Spec"]["Name"].startswith("sim"))
        polls += 1
        if time.time() - last_log > 5:
            log(f"  {running}/{tasks} tasks running ({time.time() - start:.1f} s)")
            last_log = time.time()
    result = {"start": start, "running_s": round(time.time() - start, 2),
              "create_calls_s": round(created_call_s, 3), "polls": polls}
    if paused is not None:
        thread, outcome = paused
        thread.join()
        result["pause"] = outcome
    return result


def task_facts(cluster: Cluster, mgr: ManagerProc, start: float) -> dict[str, Any]:
    """From one GET /tasks at the end: where the tasks are and when the last was created."""
    manager_ids = cluster.ids()
    tasks = cluster.get(mgr, "/tasks")
    per_node: dict[str, int] = {}
    for t in tasks:
        per_node[t.get("NodeID", "")] = per_node.get(t.get("NodeID", ""), 0) + 1
    created = max(wall(t["CreatedAt"]) for t in tasks) if tasks else start
    # UpdatedAt: when the last write of the task (its RUNNING status) was committed;
    # Status.Timestamp: when its node saw it running.
    committed = sorted(wall(t["UpdatedAt"]) - start for t in tasks)
    lag = sorted(wall(t["UpdatedAt"]) - wall(t["Status"]["Timestamp"]) for t in tasks)
    return {"tasks_listed": len(tasks),
            "running_committed_p50_s": round(percentile(committed, 0.5), 2),
            "running_committed_s": round(committed[-1], 2) if committed else 0.0,
            "report_lag_p50_s": round(percentile(lag, 0.5), 3),
            "report_lag_p99_s": round(percentile(lag, 0.99), 3),
            "report_lag_max_s": round(lag[-1], 3) if lag else 0.0,
            "running": sum(1 for t in tasks if t["Status"]["State"] == "running"),
            "on_manager": sum(per_node.get(m, 0) for m in manager_ids),
            "nodes_used": len(per_node),
            "per_node_min": min(per_node.values(), default=0),
            "per_node_max": max(per_node.values(), default=0),
            "created_s": round(created - start, 2)}


def percentile(values: list[float], q: float) -> float:
    """Of sorted values (nearest rank)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]
