"""Leader failover time (issue 7): from SIGKILL of the Raft leader's shoald until a write
through a surviving manager is acknowledged.

One lab of 3 managers (`shoal.lab.up(NAME, 3, 0)`). Each run:

  1. waits until the cluster is settled: every manager's `GET /nodes` shows the same single
     leader and all 3 managers reachable;
  2. t0: SIGKILL of the leader's shoald;
  3. at once, one client per survivor writes a label on its own node (`GET /nodes/<id>`,
     then `POST /nodes/<id>/update?version=N`), and tries again --retry s after any error
     (a stale version, 503, a timeout) until a write is acknowledged (200). The figure is the time
     from t0 to the first acknowledgement, on either survivor;
  4. restarts the killed shoald on its data and waits until it is back in Raft: settled as
     in 1, and a label write through the restarted manager acknowledged.

The leader of one run is killed in the next, so every manager takes its turn. Baselines:
2.1-2.4 s measured before issue 7 (same lab, the RaftTiming of the time); Docker Swarm
10-20 s (Raft tick 1 s, ElectionTick 10, etcd/raft randomises the election timeout between
10 and 20 ticks; ../shared/reference/swarm-features.md).

    sudo .venv/bin/python bench/failover.py            # 10 runs, about 2 min
    sudo .venv/bin/python bench/failover.py --quick    # 2 runs, about 40 s

Needs root (the lab's namespaces). Results: a table on stdout and
bench/results/failover.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.waiting import BenchError, progress_log, take_down, wait_for  # noqa: E402
from manager.raft.replica import RaftTiming  # noqa: E402
from shoal import lab, procs  # noqa: E402
from shoal.client import APIError, Client  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "failover.json"
MANAGERS = ("m1", "m2", "m3")
LABEL = "bench.failover"
GOAL_S = 1.5
BEFORE_S = (2.1, 2.4)  # measured before issue 7
DOCKER_S = (10.0, 20.0)  # election timeout 10-20 ticks of 1 s
ACK_TIMEOUT = 60.0  # a failover slower than this is a failure, not a figure
SETTLE_TIMEOUT = 90.0
ATTEMPT_TIMEOUT = 15.0  # one HTTP request: the API itself waits up to 10 s for a commit

WRITE_ERRORS = (APIError, OSError, http.client.HTTPException)


# ---- the cluster as the API shows it ---------------------------------------------------

def label_write(client: Client, node_id: str, value: str) -> None:
    """One acknowledged write, or an exception: a label on the node, compare-and-set."""
    node = client.get(f"/nodes/{node_id}")
    spec = dict(node["Spec"])
    spec["Labels"] = dict(spec.get("Labels") or {}, **{LABEL: value})
    client.post(f"/nodes/{node_id}/update", spec, version=node["Version"]["Index"])


def leader_seen(client: Client, managers: set[str]) -> str | None:
    """The leader's node ID in this manager's view, when the view is settled: one leader and
    every manager reachable."""
    nodes = [n for n in client.get("/nodes") if n["ID"] in managers]
    status = [n.get("ManagerStatus") or {} for n in nodes]
    leaders = [n["ID"] for n, s in zip(nodes, status, strict=True) if s.get("Leader")]
    if len(nodes) != len(managers) or len(leaders) != 1:
        return None
    if any(s.get("Reachability") != "reachable" for s in status):
        return None
    return leaders[0]


def settled_leader(state: lab.LabState) -> lab.HostState | None:
    """The leader's host when all managers agree on it and see every manager reachable."""
    hosts = [state.host(m) for m in MANAGERS]
    ids = {h.node_id or "" for h in hosts}
    try:
        seen = {leader_seen(h.client(timeout=5.0), ids) for h in hosts}
    except WRITE_ERRORS:
        return None
    if len(seen) != 1 or None in seen:
        return None
    leader_id = seen.pop()
    return next(h for h in hosts if h.node_id == leader_id)


# ---- one run -----------------------------------------------------------------------------

class Writer(threading.Thread):
    """A client on one survivor: label writes from `go` until one is acknowledged."""

    def __init__(self, host: lab.HostState, value: str, retry: float,
                 go: threading.Event) -> None:
        super().__init__(daemon=True, name=f"writer-{host.name}")
        self.host, self.value, self.retry, self.go = host, value, retry, go
        self.t0 = 0.0
        self.acked_s: float | None = None
        self.errors: list[tuple[float, float, str]] = []  # (sent, answered, error) from t0

    def run(self) -> None:
        self.go.wait()
        client = self.host.client(timeout=ATTEMPT_TIMEOUT)
        while time.perf_counter() - self.t0 < ACK_TIMEOUT:
            sent = time.perf_counter() - self.t0
            try:
                label_write(client, self.host.node_id or "", self.value)
            except WRITE_ERRORS as exc:
                answered = time.perf_counter() - self.t0
                self.errors.append((round(sent, 3), round(answered, 3), _short(exc)))
                time.sleep(self.retry)
                continue
            self.acked_s = time.perf_counter() - self.t0
            return


def _short(exc: Exception) -> str:
    text = exc.message if isinstance(exc, APIError) else f"{type(exc).__name__}: {exc}"
    status = f"{exc.status} " if isinstance(exc, APIError) else ""
    return (status + text)[:160]


def kill_and_write(state: lab.LabState, leader: lab.HostState, run: int,
                   retry: float) -> dict[str, Any]:
    survivors = [state.host(m) for m in MANAGERS if m != leader.name]
    go = threading.Event()
    writers = [Writer(h, f"run{run}", retry, go) for h in survivors]
    for w in writers:
        w.start()
    pid = lab.status(state.name).host(leader.name).pid
    if pid is None:
        raise BenchError(f"{leader.name}: no shoald PID recorded")
    os.kill(pid, signal.SIGKILL)
    t0 = time.perf_counter()
    for w in writers:
        w.t0 = t0
    go.set()
    for w in writers:
        w.join(ACK_TIMEOUT + ATTEMPT_TIMEOUT)
    acked = {w.host.name: round(w.acked_s, 3) for w in writers if w.acked_s is not None}
    if len(acked) < len(writers):
        raise BenchError(f"no write acknowledged within {ACK_TIMEOUT:.0f} s of killing "
                         f"{leader.name} on {sorted({w.host.name for w in writers} - set(acked))}"
                         f": {[w.errors[-3:] for w in writers]}")
    wait_for(lambda: not procs.alive(pid), 10.0, f"{leader.name}'s shoald to exit")
    first = min(acked, key=lambda k: acked[k])
    return {"killed": leader.name, "ack_s": acked[first], "acked_by": first,
            "survivor_ack_s": acked, "errors": {w.host.name: w.errors for w in writers}}


def rejoin(state: lab.LabState, killed: lab.HostState, run: int) -> dict[str, Any]:
    t1 = time.perf_counter()
    lab.start_host(state.name, killed.name)
    client = killed.client(timeout=ATTEMPT_TIMEOUT)

    def written() -> bool:
        try:
            label_write(client, killed.node_id or "", f"rejoined{run}")
            return True
        except WRITE_ERRORS:
            return False

    leader = wait_for(lambda: settled_leader(state), SETTLE_TIMEOUT,
                      f"{killed.name} back in Raft", interval=0.2)
    wait_for(written, SETTLE_TIMEOUT, f"a write through {killed.name}", interval=0.2)
    return {"rejoined_s": round(time.perf_counter() - t1, 2), "leader_after": leader.name}


def measure(state: lab.LabState, runs: int, retry: float,
            log: Callable[[str], None]) -> list[dict[str, Any]]:
    results = []
    for run in range(runs):
        leader = wait_for(lambda: settled_leader(state), SETTLE_TIMEOUT, "a settled leader",
                          interval=0.2)
        result = kill_and_write(state, leader, run, retry)
        result.update(rejoin(state, leader, run))
        failed = sum(len(e) for e in result["errors"].values())
        each = ", ".join(f"{h} {a:.2f} s" for h, a in sorted(result["survivor_ack_s"].items()))
        log(f"run {run + 1}: killed {leader.name}, first write acknowledged after "
            f"{result['ack_s']:.2f} s ({each}; {failed} failed attempts); "
            f"{leader.name} back in {result['rejoined_s']:.1f} s, leader now "
            f"{result['leader_after']}")
        results.append(result)
    return results


# ---- figures -----------------------------------------------------------------------------

def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    acks = [r["ack_s"] for r in results]
    each = [a for r in results for a in r["survivor_ack_s"].values()]
    p50 = statistics.median(acks)
    return {"runs": len(acks), "p50_s": round(p50, 3), "max_s": max(acks), "min_s": min(acks),
            "all_s": acks, "goal_s": GOAL_S, "before_s": list(BEFORE_S),
            "docker_s": list(DOCKER_S),
            "p50_over_before": [round(p50 / b, 2) for b in BEFORE_S],
            "p50_over_docker": [round(p50 / d, 3) for d in DOCKER_S],
            # a client that stays on one survivor (both survivors of every run)
            "per_survivor": {"p50_s": round(statistics.median(each), 3), "max_s": max(each),
                             "all_s": each}}


def table(s: dict[str, Any]) -> str:
    lo, hi = s["p50_over_before"]
    dlo, dhi = s["p50_over_docker"]
    per = s["per_survivor"]
    return "\n".join([
        f"leader SIGKILL -> next write acknowledged, {s['runs']} runs",
        f"  first ack on either survivor: p50 {s['p50_s']:.2f} s   max {s['max_s']:.2f} s   "
        f"min {s['min_s']:.2f} s   (goal p50 <= {GOAL_S} s)",
        "  all runs: " + ", ".join(f"{a:.2f}" for a in s["all_s"]),
        f"  a client on one survivor: p50 {per['p50_s']:.2f} s   max {per['max_s']:.2f} s",
        f"  p50 / before issue 7 ({BEFORE_S[0]}-{BEFORE_S[1]} s): {hi:.2f}-{lo:.2f}",
        f"  p50 / Docker Swarm ({DOCKER_S[0]:.0f}-{DOCKER_S[1]:.0f} s): {dhi:.3f}-{dlo:.3f}",
    ])


def keep_logs(name: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"shoal-{name}-"))
    for host in MANAGERS:
        log_file = lab.state_dir(name) / host / "shoald.log"
        if log_file.exists():
            shutil.copy(log_file, out / f"{host}.log")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="leader kills to time")
    parser.add_argument("--retry", type=float, default=0.05,
                        help="seconds a client waits after a failed write (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 kills")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 2
    if args.runs < 1 or args.retry < 0:
        parser.error("--runs must be positive and --retry not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()

    log = progress_log(started)

    name = "fo" + secrets.token_hex(3)
    log(f"lab {name}: 3 managers coming up")
    try:
        state = lab.up(name, len(MANAGERS), 0)
        results = measure(state, args.runs, args.retry, log)
    except BenchError:
        log(f"failed; the daemons' logs are kept in {keep_logs(name)}")
        raise
    finally:
        take_down(name, log)
    figures = summary(results)
    print(table(figures))
    result = {
        "benchmark": "failover", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(),
                    "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]}},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "raft_timing": dataclasses.asdict(RaftTiming()),
        "duration_s": round(time.monotonic() - started, 1), "summary": figures,
        "runs": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
