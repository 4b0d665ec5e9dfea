"""Start latency: a service of N replicas until all N tasks run, against starting the same N
containers directly with docker-py on the same engine.

One lab (`shoal.lab.up(NAME, 1, 2)`: 1 manager, 2 workers, all active) and its private
dockerd. For each N (default 1, 10, 50), each repetition measures three things in turn (the
order rotates from one repetition to the next):

  ours             POST /services/create of N replicas of `shoal/busybox:latest sleep 3600`
                   on the manager's socket; wait (on the engine's event stream, which the
                   engine pushes) until N of its containers have started, then GET
                   /services?status=true every POLL s until ServiceStatus.RunningTasks == N
                   (after one untimed warm-up run of ours and of docker-py). Polling our
                   API every 10 ms from the create call on cost the manager up to 1.2 CPU-s
                   per 50-replica run on this 2-core machine, which the engine then lacked:
                   the benchmark slowed what it measured.
  docker-py seq    N x (create_container + start), one after the other, network_mode none,
                   same image and command; then one listing call confirms N running
  docker-py conc   the same from a pool of THREADS threads

Each ends with a cleanup that is timed too but not part of the figure: `DELETE
/services/<id>` then wait until the engine lists none of its containers; or a forced remove
of the docker-py containers. The baseline per N is the faster of the two docker-py variants
(by median); the JSON and the table say which. For our runs the containers are inspected
before removal, which splits the time into: the control plane until the first container
exists, the engine until the last one has started, and the reporting until the API shows
all N running.

    sudo .venv/bin/python bench/start_latency.py [--quick] [--sizes 1,10,50] [--repeat 3]

Needs root (the lab's namespaces). Results: a table on stdout and
bench/results/start_latency.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402

from bench.waiting import (
    BenchError,
    progress_log,  # noqa: E402
    take_down,
    wait_for,  # noqa: E402
    wall,
)
from shoal import lab  # noqa: E402
from shoal.client import Client  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "start_latency.json"
IMAGE = "shoal/busybox:latest"
COMMAND = ["sleep", "3600"]
POLL = 0.01  # our API is polled this often for the running count (as fine as we can read)
THREADS = 8
SETTLE = 1.0  # seconds of rest after each cleanup
BENCH_LABEL = "shoal.bench"  # on the docker-py containers, to find and remove them
RUN_TIMEOUT = 300.0
VARIANTS = (("ours", "shoal service"), ("seq", "docker-py seq"),
            ("conc", f"docker-py {THREADS} threads"))


# ---- ours: a service through the API ----------------------------------------------------

def running_tasks(client: Client, service_id: str) -> int:
    for svc in client.get("/services", status=True, filters={"id": [service_id]}):
        if svc["ID"] == service_id:
            return int((svc.get("ServiceStatus") or {}).get("RunningTasks", 0))
    raise BenchError(f"service {service_id} is missing from GET /services")


def engine_ids(eng: docker.APIClient, label: str) -> list[str]:
    return [c["Id"] for c in eng.containers(all=True, filters={"label": label})]


def phases(eng: docker.APIClient, label: str, t0_wall: float) -> dict[str, float]:
    """Seconds from the create call to the first container created and the last started."""
    infos = [eng.inspect_container(cid) for cid in engine_ids(eng, label)]
    if not infos:
        raise BenchError(f"no container labelled {label} to inspect")
    return {"first_created_s": min(wall(i["Created"]) for i in infos) - t0_wall,
            "last_started_s": max(wall(i["State"]["StartedAt"]) for i in infos) - t0_wall}


class EngineStarts:
    """Counts the engine's start events of containers carrying `label`, on a stream read by a
    thread of its own; `wait(n)` blocks until n have started. Events from `since` on are
    replayed, so none is missed however late the stream is opened."""

    def __init__(self, eng: docker.APIClient, label: str, since: float) -> None:
        self._stream = eng.events(
            since=int(since), decode=True,
            filters={"type": "container", "event": "start", "label": label})
        self._cond = threading.Condition()
        self._count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for _ in self._stream:
            with self._cond:
                self._count += 1
                self._cond.notify_all()

    def wait(self, n: int, timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._count >= n, timeout):
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")

    def close(self) -> None:
        self._stream.close()


def run_ours(client: Client, eng: docker.APIClient, n: int, tag: str) -> dict[str, Any]:
    # A short stop grace only speeds up the cleanup (`sleep` as PID 1 ignores SIGTERM).
    body = {"Name": f"bench-{tag}",
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": COMMAND,
                                               "StopGracePeriod": 1_000_000_000}},
            "Mode": {"Replicated": {"Replicas": n}}}
    t0_wall, t0 = time.time(), time.perf_counter()
    starts = EngineStarts(eng, f"com.docker.swarm.service.name=bench-{tag}",
                          since=t0_wall - 1)
    try:
        service_id = client.post("/services/create", body)["ID"]
        t_api = time.perf_counter() - t0
        starts.wait(n, RUN_TIMEOUT, f"the engine to start {n} containers of bench-{tag}")
    finally:
        starts.close()
    t_engine = time.perf_counter() - t0
    wait_for(lambda: running_tasks(client, service_id) >= n, RUN_TIMEOUT,
             f"{n} running tasks of service bench-{tag}", interval=POLL)
    elapsed = time.perf_counter() - t0
    label = f"com.docker.swarm.service.id={service_id}"
    result = {"s": elapsed, "create_call_s": t_api, "engine_events_s": t_engine,
              **phases(eng, label, t0_wall)}
    t1 = time.perf_counter()
    client.delete(f"/services/{service_id}")
    wait_for(lambda: not engine_ids(eng, label), RUN_TIMEOUT,
             f"the containers of service bench-{tag} to be removed", interval=POLL)
    result["cleanup_s"] = time.perf_counter() - t1
    return result


# ---- the baseline: docker-py on the same engine ------------------------------------------

def start_one(eng: docker.APIClient, label: str, name: str) -> None:
    container = eng.create_container(
        IMAGE, COMMAND, name=name, labels={BENCH_LABEL: label},
        host_config=eng.create_host_config(network_mode="none"))
    eng.start(container["Id"])


def run_direct(eng: docker.APIClient, n: int, tag: str, threads: int) -> dict[str, Any]:
    label = f"{BENCH_LABEL}={tag}"
    names = [f"bench-{tag}-{i}" for i in range(n)]
    t0 = time.perf_counter()
    if threads <= 1:
        for name in names:
            start_one(eng, tag, name)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda name: start_one(eng, tag, name), names))
    up = eng.containers(filters={"label": label, "status": "running"})
    elapsed = time.perf_counter() - t0
    if len(up) != n:
        raise BenchError(f"docker-py: {len(up)} of {n} containers running after start")
    t1 = time.perf_counter()
    ids = engine_ids(eng, label)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda cid: eng.remove_container(cid, force=True), ids))
    wait_for(lambda: not engine_ids(eng, label), RUN_TIMEOUT, f"containers {label} removed",
             interval=POLL)
    return {"s": elapsed, "cleanup_s": time.perf_counter() - t1}


# ---- the runs and the figures ------------------------------------------------------------

def measure(state: lab.LabState, sizes: list[int], repeat: int,
            log: Callable[[str], None]) -> list[dict[str, Any]]:
    client = state.host("m1").client(timeout=60.0)
    eng = docker.APIClient(base_url=state.engine, version="1.41", timeout=120)
    rows = []
    try:
        # One untimed run of each first: connections, the engine's caches and the agents'
        # event streams are warm for every variant alike.
        run_ours(client, eng, 1, "warm" + secrets.token_hex(2))
        run_direct(eng, 1, "warm" + secrets.token_hex(2), 1)
        log("warmed up (one untimed run of each)")
        for n in sizes:
            runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in VARIANTS}
            for rep in range(repeat):
                # rotate the order, so no variant always runs first or after the same one
                for key, label in VARIANTS[rep % 3:] + VARIANTS[:rep % 3]:
                    tag = f"{key}{n}r{rep}{secrets.token_hex(2)}"
                    if key == "ours":
                        result = run_ours(client, eng, n, tag)
                    else:
                        result = run_direct(eng, n, tag, 1 if key == "seq" else THREADS)
                    runs[key].append(result)
                    time.sleep(SETTLE)
                    log(f"N={n} run {rep + 1}/{repeat} {label}: {result['s']:.2f} s "
                        f"(cleanup {result['cleanup_s']:.2f} s)")
            rows.append(make_row(n, runs))
    finally:
        eng.close()
    return rows


def median_of(runs: list[dict[str, Any]], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def make_row(n: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    ours, seq, conc = (median_of(runs[k], "s") for k in ("ours", "seq", "conc"))
    baseline_key = "seq" if seq <= conc else "conc"
    baseline = min(seq, conc)
    return {
        "n": n, "ours_s": ours, "seq_s": seq, "conc_s": conc,
        "baseline": baseline_key, "baseline_s": baseline, "ratio": ours / baseline,
        "overhead_ms_per_task": (ours - baseline) / n * 1e3,
        "ours_create_call_s": median_of(runs["ours"], "create_call_s"),
        "ours_first_created_s": median_of(runs["ours"], "first_created_s"),
        "ours_last_started_s": median_of(runs["ours"], "last_started_s"),
        "ours_engine_events_s": median_of(runs["ours"], "engine_events_s"),
        "ours_cleanup_s": median_of(runs["ours"], "cleanup_s"),
        "runs": runs}


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'N':>4} {'ours s':>8} {'seq s':>8} {'conc s':>8} {'baseline':>9} "
            f"{'ours/base':>9} {'ms/task':>8} {'1st ctr s':>9} {'last start s':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['n']:4d} {r['ours_s']:8.2f} {r['seq_s']:8.2f} {r['conc_s']:8.2f} "
                     f"{r['baseline']:>9} {r['ratio']:9.2f} {r['overhead_ms_per_task']:8.0f} "
                     f"{r['ours_first_created_s']:9.2f} {r['ours_last_started_s']:12.2f}")
    lines.append("ours/base: our median over the faster docker-py variant's median; ms/task: "
                 "(ours - base) / N;\n1st ctr / last start: from our create call to the "
                 "engine's first Created and last StartedAt (medians)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,50", help="replica counts (default 1,10,50)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N and variant (median)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 1, 5, one run each")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = "1,5", 1
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: give comma-separated integers")
    if min(args.sizes) < 1 or args.repeat < 1:
        parser.error("sizes and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()

    log = progress_log(started)

    name = "sl" + secrets.token_hex(3)
    log(f"lab {name}: 1 manager + 2 workers coming up")
    try:
        state = lab.up(name, 1, 2)
        log(f"lab {name} up; engine {state.engine}")
        rows = measure(state, args.sizes, args.repeat, log)
    finally:
        take_down(name, log)
    log("done")
    print(table(rows))
    result = {
        "benchmark": "start_latency", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(),
                    "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]}},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "lab": {"managers": 1, "workers": 2, "image": IMAGE, "command": COMMAND,
                "poll_s": POLL, "threads": THREADS},
        "duration_s": time.monotonic() - started, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
