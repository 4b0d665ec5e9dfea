"""Store benchmark: committed writes per second and commit latency, from raw pysyncobj up to
the HTTP API of a 3-manager lab.

Rows:
  raw pysyncobj   3 plain SyncObj processes on 127.0.0.1, RaftReplica's SyncObjConf, one
                  @replicated method taking a payload the size of a serialized Node update
  raw, batch off  the same with appendEntriesUseBatch=False (an AppendEntries per command)
  store direct    3 RaftReplica + MemoryStore processes; `await replica.propose(batch)` with
                  a StoreBatch that PUTs a Node
  API (leader)    `shoal.lab.up(NAME, 3, 0)`; GET /nodes/<id> then
                  POST /nodes/<id>/update?version=N (a label change) on the leader's socket
  API (follower)  the same on a follower's socket (Raft forwards the write to the leader)

The writer runs in the leader's process (direct rows) or in this process (API rows); the
direct rows also run the sequential writes in a follower's process (`fol_seq_*`: pysyncobj
forwards them to the leader). Sequential runs give the latency percentiles; concurrent runs
keep K writes in flight (K=32 direct; for the API, one thread per manager node, each
updating its own node with a read-modify-write that retries on "update out of sequence").
API latency is that of the POST (the commit); the GET+POST latency is in the JSON too.

    sudo .venv/bin/python bench/store_bench.py [--quick] [--writes N] [--api-writes N]

The lab rows need root (network namespaces). Results: a table on stdout and
bench/results/store_bench.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import raw_pysyncobj as rp  # noqa: E402

from bench.waiting import take_down  # noqa: E402
from manager.raft.replica import RaftTiming  # noqa: E402
from shoal import lab  # noqa: E402
from shoal.client import APIError, Client  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "store_bench.json"
LEADER_TIMEOUT = 30.0
WARMUP = 20
API_K = 3  # API rows: one writer thread per manager node of the lab
API_RETRIES = 50
ROWS = (("raw", "raw pysyncobj"), ("raw_nobatch", "raw, batch off"), ("store", "store direct"),
        ("api_leader", "API (leader)"), ("api_follower", "API (follower)"))


class BenchError(Exception):
    pass


# ---- numbers -----------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`, in the same unit."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarize(stats: dict[str, Any], prefix: str) -> dict[str, Any]:
    lat = stats["latencies"]
    return {f"{prefix}_writes": len(lat),
            f"{prefix}_writes_per_s": len(lat) / stats["elapsed"],
            f"{prefix}_p50_ms": percentile(lat, 50) * 1e3,
            f"{prefix}_p99_ms": percentile(lat, 99) * 1e3}


def make_row(key: str, seq: dict[str, Any], conc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    row = {"key": key, "label": dict(ROWS)[key], **summarize(seq, "seq"),
           **summarize(conc, "conc"), **extra}
    row["p50_ms"], row["p99_ms"] = row["seq_p50_ms"], row["seq_p99_ms"]
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Throughput vs raw at raw's K, and vs raw at the row's own K; p50 vs raw's."""
    base = rows[0]
    base_at = {base["concurrency"]: base["conc_writes_per_s"],
               API_K: base[f"conc_k{API_K}_writes_per_s"]}
    for row in rows:
        row["throughput_ratio"] = row["conc_writes_per_s"] / base["conc_writes_per_s"]
        row["throughput_ratio_same_k"] = row["conc_writes_per_s"] / base_at[row["concurrency"]]
        row["p50_ratio"] = row["p50_ms"] / base["p50_ms"]


# ---- direct rows: three replica processes on loopback ------------------------------------

def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ReplicaCluster:
    """Three replica processes (`raw` or `store`), driven over pipes; always `close()`."""

    def __init__(self, kind: str, size: int = 3) -> None:
        self.kind = kind
        self.tmp = tempfile.mkdtemp(prefix=f"shoal-bench-{kind}-")
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        ctx = multiprocessing.get_context("spawn")
        addrs = [f"127.0.0.1:{port}" for port in free_ports(size)]
        secret = secrets.token_hex(16)
        for i, addr in enumerate(addrs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=rp.replica_main, daemon=True,
                               name=f"bench-{kind}-{i}",
                               args=(kind, addr, addrs, secret, os.path.join(self.tmp, f"r{i}"),
                                     child))
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def ask(self, i: int, command: tuple[Any, ...], timeout: float) -> Any:
        conn = self.conns[i]
        conn.send(command)
        if not conn.poll(timeout):
            raise BenchError(f"{self.kind} replica {i}: no answer to {command[0]} in {timeout} s")
        status, value = conn.recv()
        if status != "ok":
            raise BenchError(f"{self.kind} replica {i} failed:\n{value}")
        return value

    def wait_leader(self) -> tuple[int, dict[str, Any]]:
        """Index and status of the leader, once exactly one leads and every replica is ready."""
        deadline = time.monotonic() + LEADER_TIMEOUT
        while time.monotonic() < deadline:
            states = [self.ask(i, ("status",), 10.0) for i in range(len(self.procs))]
            leaders = [i for i, s in enumerate(states) if s["leader"]]
            if len(leaders) == 1 and all(s["ready"] for s in states):
                return leaders[0], states[leaders[0]]
            time.sleep(0.1)
        raise BenchError(f"{self.kind}: no single leader within {LEADER_TIMEOUT} s")

    def run(self, leader: int, mode: str, n: int, k: int = 1) -> dict[str, Any]:
        return self.ask(leader, ("run", mode, n, k), timeout=30.0 + n * 0.5)  # type: ignore

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
        for conn in self.conns:
            conn.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def direct_row(key: str, n_seq: int, n_conc: int, k: int) -> dict[str, Any]:
    cluster = ReplicaCluster(key)
    try:
        leader, status = cluster.wait_leader()
        follower = (leader + 1) % len(cluster.procs)
        cluster.run(leader, "sequential", WARMUP)
        seq = cluster.run(leader, "sequential", n_seq)
        conc = cluster.run(leader, "concurrent", n_conc, k)
        same_k = cluster.run(leader, "concurrent", max(API_K * 10, n_conc // 4), API_K)
        cluster.run(follower, "sequential", WARMUP)
        fol = cluster.run(follower, "sequential", n_seq)
        return make_row(key, seq, conc, concurrency=k, conf=status["conf"],
                        **summarize(same_k, f"conc_k{API_K}"), **summarize(fol, "fol_seq"))
    finally:
        cluster.close()


# ---- API rows: a 3-manager lab ----------------------------------------------------------

def api_write(client: Client, node_id: str, i: int, retries: list[int]) -> tuple[float, float]:
    """Read-modify-write one label of a node; (POST latency, GET+POST latency) in seconds."""
    t0 = time.perf_counter()
    for _ in range(API_RETRIES):
        node = client.get(f"/nodes/{node_id}")
        spec = node["Spec"]
        spec["Labels"]["bench"] = str(i)
        t1 = time.perf_counter()
        try:
            client.post(f"/nodes/{node_id}/update", spec, version=node["Version"]["Index"])
        except APIError as exc:
            if "update out of sequence" not in exc.message:  # 500, as dockerd answers it
                raise
            retries[0] += 1
            continue
        t2 = time.perf_counter()
        return t2 - t1, t2 - t0
    raise BenchError(f"node {node_id}: update kept failing (out of sequence) after "
                     f"{API_RETRIES} tries")


def api_run(host: lab.HostState, node_ids: list[str], n: int) -> dict[str, Any]:
    """`n` writes over the host's socket, one thread per node in `node_ids`."""
    post: list[float] = []
    rmw: list[float] = []
    retries, failures = [0], []

    def writer(node_id: str, count: int) -> None:
        client = host.client(timeout=10.0)
        try:
            for i in range(count):
                p, r = api_write(client, node_id, i, retries)
                post.append(p)
                rmw.append(r)
        except Exception as exc:  # reported by the main thread
            failures.append(exc)

    counts = [n // len(node_ids) + (j < n % len(node_ids)) for j in range(len(node_ids))]
    threads = [threading.Thread(target=writer, args=(nid, c))
               for nid, c in zip(node_ids, counts, strict=True)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30.0 + n)
    elapsed = time.perf_counter() - start
    if failures or any(t.is_alive() for t in threads):
        raise BenchError(f"API writes on {host.name} failed: {failures or 'timed out'}")
    return {"latencies": post, "rmw": rmw, "elapsed": elapsed, "retries": retries[0]}


def lab_roles(state: lab.LabState) -> tuple[lab.HostState, lab.HostState]:
    """(leader, a follower) among the lab's managers, per GET /nodes."""
    by_id = {h.node_id: h for h in state.hosts}
    deadline = time.monotonic() + LEADER_TIMEOUT
    while time.monotonic() < deadline:
        nodes = state.hosts[0].client(timeout=10.0).get("/nodes")
        leaders = [n["ID"] for n in nodes if (n.get("ManagerStatus") or {}).get("Leader")]
        if len(leaders) == 1 and leaders[0] in by_id:
            leader = by_id[leaders[0]]
            return leader, next(h for h in state.hosts if h is not leader)
        time.sleep(0.2)
    raise BenchError(f"lab {state.name}: no single leader in GET /nodes")


def api_rows(n_seq: int, n_conc: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    name = "sb" + secrets.token_hex(3)
    log(f"lab {name}: 3 managers coming up")
    try:
        state = lab.up(name, 3, 0)
        leader, follower = lab_roles(state)
        node_ids = [h.node_id for h in state.hosts if h.node_id]
        if len(node_ids) != API_K:
            raise BenchError(f"lab {name}: expected {API_K} node IDs, got {node_ids}")
        rows = []
        for key, host in (("api_leader", leader), ("api_follower", follower)):
            log(f"{dict(ROWS)[key]}: {host.name}")
            api_run(host, [host.node_id or ""], WARMUP)
            seq = api_run(host, [host.node_id or ""], n_seq)
            conc = api_run(host, node_ids, n_conc)
            rows.append(make_row(
                key, seq, conc, concurrency=len(node_ids), host=host.name,
                seq_rmw_p50_ms=percentile(seq["rmw"], 50) * 1e3,
                seq_rmw_p99_ms=percentile(seq["rmw"], 99) * 1e3,
                seq_retries=seq["retries"], conc_retries=conc["retries"]))
        return rows
    finally:
        take_down(name, log)


# ---- output ------------------------------------------------------------------------------

def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'':16} {'writes/s seq':>12} {'writes/s conc':>13} {'K':>3} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'fol p50':>8} {'thr/raw':>8} {'thr/raw@K':>9} {'p50/raw':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        fol = f"{r['fol_seq_p50_ms']:8.2f}" if "fol_seq_p50_ms" in r else f"{'':8}"
        lines.append(f"{r['label']:16} {r['seq_writes_per_s']:12.1f} "
                     f"{r['conc_writes_per_s']:13.1f} {r['concurrency']:3d} {r['p50_ms']:8.2f} "
                     f"{r['p99_ms']:8.2f} {fol} {r['throughput_ratio']:8.3f} "
                     f"{r['throughput_ratio_same_k']:9.3f} {r['p50_ratio']:8.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=500,
                        help="sequential writes per direct row (default 500)")
    parser.add_argument("--concurrent-writes", type=int,
                        help="concurrent writes per direct row (default 4 x --writes)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="writes in flight for the direct rows (default 32)")
    parser.add_argument("--api-writes", type=int, default=300,
                        help="sequential and concurrent writes per API row (default 300)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 50 writes direct, 200 concurrent, 30 per API run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.writes, args.concurrent_writes, args.api_writes = 50, 200, 30
    args.concurrent_writes = args.concurrent_writes or 4 * args.writes
    if min(args.writes, args.concurrent_writes, args.concurrency, args.api_writes) < 1:
        parser.error("counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    rows = []
    for key in ("raw", "raw_nobatch", "store"):
        log(f"{dict(ROWS)[key]}: {args.writes} sequential, {args.concurrent_writes} with "
            f"{args.concurrency} in flight")
        rows.append(direct_row(key, args.writes, args.concurrent_writes, args.concurrency))
    raw, store = rows[0], rows[2]
    if raw["conf"] != store["conf"]:
        raise BenchError(f"SyncObjConf differs: raw {raw['conf']} vs store {store['conf']}")
    rows.extend(api_rows(args.api_writes, args.api_writes, log))
    add_ratios(rows)
    log("done")
    print(table(rows))
    result = {
        "benchmark": "store_bench", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "payload_bytes": rp.node_update_size(), "timing": asdict(RaftTiming()),
        "duration_s": time.monotonic() - started, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
