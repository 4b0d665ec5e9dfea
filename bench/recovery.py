"""Node-failure recovery time (issue 3, item 5): from SIGKILL of a worker's shoald until the
node is shown down and until all of a service's tasks run again elsewhere.

One lab (`shoal.lab.up(NAME, 1, 3)`: 1 manager, drained, and 3 workers) and its private
dockerd. Each run:

  1. creates a service of 6 replicas of `shoal/busybox:latest sleep 3600` and waits until 6
     tasks run (2 per worker);
  2. picks the victim, a worker with running tasks (w1, w2, w3 in turn);
  3. t0: `shoal.lab.kill_host` (SIGKILL of its shoald), then removes the victim's containers
     from the engine (label `com.docker.swarm.node.id=<its node ID>`), as a dead machine
     would have none;
  4. polls GET /nodes/<id> and GET /tasks on the manager every POLL s and records
     (a) down: the node's state is `down`,
     (b) recovered: 6 tasks desired and observed `running`, none on the victim;
     and, from the tasks once recovered, when the replacements were created (CreatedAt);
  5. starts the victim's shoald again, waits until its node is ready and 6 tasks still
     run, removes the service and waits until its containers are gone.

A fresh service per run keeps the placement the same (2 tasks per worker) in every run.
Docker's defaults give about 20 s (a node is marked down after 3 missed heartbeats of 5 s,
then its tasks are rescheduled); the table gives our time over that.

    sudo .venv/bin/python bench/recovery.py [--quick] [--runs 5] [--hang]

`--hang` sends SIGSTOP instead of SIGKILL: the daemon stops answering but its TCP
connections stay open, as when a machine loses power or its network (no FIN or RST reaches
the manager), so the node is found down by missed heartbeats rather than by its session
ending.

Needs root (the lab's namespaces). Results: a table on stdout and
bench/results/recovery.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from bench.waiting import (
    BenchError,
    progress_log,  # noqa: E402
    take_down,
    wait_for,
    wall,
)
from shoal import lab  # noqa: E402
from shoal.client import Client  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "recovery.json"
IMAGE = "shoal/busybox:latest"
REPLICAS = 6
WORKERS = ("w1", "w2", "w3")
POLL = 0.1
RECOVERY_TIMEOUT = 120.0
SETTLE_TIMEOUT = 120.0
# Docker's defaults: down after 3 missed heartbeats of 5 s, tasks running again after ~20 s
DOCKER_S = {"down_s": 15.0, "recovered_s": 20.0}
NODE_LABEL = "com.docker.swarm.node.id"
SERVICE_LABEL = "com.docker.swarm.service.id"


# ---- the cluster as the API shows it -----------------------------------------------------

def running(client: Client, service_id: str) -> list[dict[str, Any]]:
    return [t for t in client.get("/tasks", filters={"service": [service_id]})
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]


def node_state(client: Client, node_id: str) -> tuple[str, str]:
    status = client.get(f"/nodes/{node_id}")["Status"]
    return status["State"], status.get("Message", "")


def drain(client: Client, node_id: str) -> None:
    node = client.get(f"/nodes/{node_id}")
    spec = dict(node["Spec"], Availability="drain")
    client.post(f"/nodes/{node_id}/update", spec, version=node["Version"]["Index"])


def remove_node_containers(eng: docker.APIClient, node_id: str) -> int:
    found = eng.containers(all=True, filters={"label": f"{NODE_LABEL}={node_id}"})
    for c in found:
        eng.remove_container(c["Id"], force=True)
    return len(found)


# ---- one run ----------------------------------------------------------------------------

def create_service(client: Client, name: str) -> str:
    body = {"Name": name,
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": ["sleep", "3600"]}},
            "Mode": {"Replicated": {"Replicas": REPLICAS}}}
    service_id = str(client.post("/services/create", body)["ID"])
    wait_for(lambda: len(running(client, service_id)) == REPLICAS, SETTLE_TIMEOUT,
             f"{REPLICAS} running tasks of {name}")
    return service_id


def pick_victim(state: lab.LabState, before: list[dict[str, Any]], run: int) -> lab.HostState:
    """The run's worker in turn, or the next one that has running tasks."""
    busy = {t["NodeID"] for t in before}
    for k in range(len(WORKERS)):
        host = state.host(WORKERS[(run + k) % len(WORKERS)])
        if host.node_id in busy:
            return host
    raise BenchError(f"no worker runs a task of the service (nodes {sorted(busy)})")


def watch(client: Client, service_id: str, node_id: str, t0: float) -> dict[str, Any]:
    """Poll until the node is down and REPLICAS tasks run elsewhere; times from t0."""
    out: dict[str, Any] = {}
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while "down_s" not in out or "recovered_s" not in out:
        if time.monotonic() > deadline:
            raise BenchError(f"after {RECOVERY_TIMEOUT:.0f} s: {out} (node {node_id}, "
                             f"service {service_id})")
        if "down_s" not in out:
            state, message = node_state(client, node_id)
            if state == "down":
                out["down_s"], out["down_message"] = time.perf_counter() - t0, message
        if "recovered_s" not in out:
            tasks = running(client, service_id)
            if len(tasks) == REPLICAS and all(t["NodeID"] != node_id for t in tasks):
                out["recovered_s"], out["tasks"] = time.perf_counter() - t0, tasks
        time.sleep(POLL)
    return out


def one_run(state: lab.LabState, client: Client, eng: docker.APIClient, run: int,
            hang: bool, log: Callable[[str], None]) -> dict[str, Any]:
    name = f"rec{run}{secrets.token_hex(2)}"
    service_id = create_service(client, name)
    before = running(client, service_id)
    victim = pick_victim(state, before, run)
    node_id = victim.node_id or ""
    lost = {t["ID"] for t in before if t["NodeID"] == node_id}

    t0_wall, t0 = time.time(), time.perf_counter()
    lab.kill_host(state.name, victim.name, signal.SIGSTOP if hang else signal.SIGKILL)
    killed_s = time.perf_counter() - t0
    removed = remove_node_containers(eng, node_id)
    removed_s = time.perf_counter() - t0
    seen = watch(client, service_id, node_id, t0)
    tasks = seen.pop("tasks")
    new = [t for t in tasks if t["ID"] not in {b["ID"] for b in before}]
    created = [wall(t["CreatedAt"]) - t0_wall for t in new]
    result = {"victim": victim.name, "tasks_lost": len(lost), "containers_removed": removed,
              "kill_s": killed_s, "containers_removed_s": removed_s, **seen,
              "replacements": len(new),
              "replacements_created_s": [min(created, default=0.0), max(created, default=0.0)]}
    log(f"run {run + 1}: {'stopped' if hang else 'killed'} {victim.name} ({len(lost)} tasks): "
        f"down after {seen['down_s']:.2f} s ({seen['down_message']}), {REPLICAS} running after "
        f"{seen['recovered_s']:.2f} s")

    t1 = time.perf_counter()
    if hang:
        lab.kill_host(state.name, victim.name)  # SIGKILL works on a stopped process
    lab.start_host(state.name, victim.name)
    wait_for(lambda: node_state(client, node_id)[0] == "ready", SETTLE_TIMEOUT,
             f"{victim.name} ready again")
    wait_for(lambda: len(running(client, service_id)) == REPLICAS, SETTLE_TIMEOUT,
             f"{REPLICAS} running tasks of {name} after the restart")
    result["restart_ready_s"] = time.perf_counter() - t1
    client.delete(f"/services/{service_id}")
    wait_for(lambda: not eng.containers(all=True,
                                        filters={"label": f"{SERVICE_LABEL}={service_id}"}),
             SETTLE_TIMEOUT, f"the containers of {name} removed")
    return result


# ---- the runs and the figures ------------------------------------------------------------

def measure(state: lab.LabState, runs: int, hang: bool,
            log: Callable[[str], None]) -> list[dict[str, Any]]:
    client = state.host("m1").client(timeout=30.0)
    drain(client, state.host("m1").node_id or "")
    eng = docker.APIClient(base_url=state.engine, version="1.41", timeout=60)
    try:
        return [one_run(state, client, eng, run, hang, log) for run in range(runs)]
    finally:
        eng.close()


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key, label in (("down_s", "node shown down"), ("recovered_s", "all 6 running again")):
        values = [r[key] for r in results]
        median = statistics.median(values)
        rows.append({"key": key, "label": label, "median_s": median, "min_s": min(values),
                     "max_s": max(values), "docker_s": DOCKER_S[key],
                     "ratio": median / DOCKER_S[key]})
    return rows


def table(rows: list[dict[str, Any]], n: int, sig: str) -> str:
    head = (f"{'from the kill to':22} {'median s':>9} {'min s':>7} {'max s':>7} "
            f"{'Docker s':>9} {'ours/Docker':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['label']:22} {r['median_s']:9.2f} {r['min_s']:7.2f} "
                     f"{r['max_s']:7.2f} {r['docker_s']:9.0f} {r['ratio']:11.2f}")
    lines.append(f"{n} run(s), {sig} of the worker's shoald; Docker's defaults: down after "
                 "3 x 5 s heartbeats (15 s), tasks running again after about 20 s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="kills to time (default 5)")
    parser.add_argument("--hang", action="store_true",
                        help="SIGSTOP instead of SIGKILL: the daemon hangs with its "
                        "connections open, as a machine that loses power or its network")
    parser.add_argument("--quick", action="store_true", help="smoke run: one kill")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    if args.runs < 1:
        parser.error("--runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()

    log = progress_log(started)

    name = "rc" + secrets.token_hex(3)
    log(f"lab {name}: 1 manager (drained) + 3 workers coming up")
    try:
        state = lab.up(name, 1, len(WORKERS))
        results = measure(state, args.runs, args.hang, log)
    finally:
        take_down(name, log)
    rows = summary(results)
    log("done")
    print(table(rows, len(results), "SIGSTOP" if args.hang else "SIGKILL"))
    result = {
        "benchmark": "recovery", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(),
                    "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]}},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "lab": {"managers": 1, "workers": len(WORKERS), "replicas": REPLICAS, "poll_s": POLL},
        "signal": "SIGSTOP" if args.hang else "SIGKILL",
        "duration_s": time.monotonic() - started, "rows": rows, "runs": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
