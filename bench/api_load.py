"""The API under load (issue 11 goal 4): clients listing services and tasks of a large
simulated cluster while a rolling update runs and a writer writes; then the docker CLI's
`service ls` on 1,000 services.

The cluster is bench/scale_sim.py's: 1 or 3 real `shoald` managers on 127.0.0.1 (drained,
fake executor), N fake nodes in a few processes with real gRPC+mTLS sessions, and S services
of T/S replicas created through the API and running. Then, for --duration seconds at once
(bench/api_load_clients.py):

- --clients threads, each looping `GET /services?status=true` (what `docker service ls`
  sends) and `GET /tasks?filters={"service":{"<name>":true}}` (what `docker service ps`
  sends) for a random service, against the leader's API socket, on one kept connection per
  client (as the docker CLI keeps its own; --new-connections: one per request); --spread:
  round robin over every manager's socket (each serves reads from its own replica; in
  Docker Swarm a follower forwards every request to the leader);
- a rolling update kept running on --update-services of the services (`--force`,
  --update-parallelism, --update-delay; when one completes the next starts);
- one writer: sequential service updates of a label on a service of its own (0 replicas),
  --write-interval apart; its longest write is the "write stall".

Reported: p50/p95/p99/max and requests/s per endpoint, the writer's p50/p99/max and writes
over 1 s, the rolling updates done, the leader's CPU and RSS over the load. Then (unless
--cli-services 0) services are added up to --cli-services in all, each of --cli-replicas
running replicas, and `docker -H unix://<leader socket> service ls` (the real docker CLI) and
`shoal service ls` are timed --cli-runs times each (median, max), beside one
`GET /services?status=true` from a kept connection (the server's part), and the API routes
the docker CLI requested (from the leader's /metrics).

    .venv/bin/python bench/api_load.py                         # 200 nodes, 2,000 tasks
    .venv/bin/python bench/api_load.py --quick                 # 20 nodes, a few seconds of load
    .venv/bin/python bench/api_load.py --nodes 1000 --tasks 10000 --services 100

Results: a table on stdout and bench/results/api_load.json (or --json PATH). Exits 0 whether
the goals are met or not; 1 only if a measurement could not be made. Traffic stays on
loopback; every process it starts is stopped by PID and the temporary directory removed.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from api_load_cli import Target, add_services, cli_phase, create_one, log  # noqa: E402
from api_load_clients import Load, figures  # noqa: E402
from scale_sim_cluster import Cluster, Watch  # noqa: E402
from scale_sim_phases import join_phase, run_phase  # noqa: E402
from scale_sim_procs import (  # noqa: E402
    LOOPBACK,
    REPO,
    AgentProcs,
    Sampler,
    loadavg,
    stop_pid,
)

from manager.dispatcher.sessions import DEFAULT_HEARTBEAT_NS, heartbeat_period  # noqa: E402
from shoal.client import APIError, Client  # noqa: E402

DEFAULT_JSON = REPO / "bench" / "results" / "api_load.json"
SERVER = REPO / "bench" / "api_load_server.py"
GOAL_P99_MS = 1000.0
GOAL_CLI_S = 1.0


# ---- the load --------------------------------------------------------------------------

def load_phase(args: argparse.Namespace, mgr: Target, sampler: Sampler,
               ids: list[str], names: list[str], list_sockets: Sequence[str] = ()
               ) -> dict[str, Any]:
    writer_id = create_one(mgr.client, "apiload-writer", 0)
    load = Load(str(mgr.socket), names, args.clients, not args.new_connections, list_sockets)
    update_ids = ids[:args.update_services]
    log(f"load: {args.clients} clients, a rolling update of {args.update_services} service(s) "
        f"(parallelism {args.update_parallelism}, delay {args.update_delay} s"
        f"{', played by the server' if args.store_only else ''}), one writer, "
        f"{args.duration:.0f} s")
    start = time.time()
    load.start(writer_id, update_ids, args.update_parallelism, args.update_delay,
               args.write_interval)
    time.sleep(args.duration)
    end = time.time()
    load.finish()
    time.sleep(2 * sampler.interval)
    out = figures(load, start, end)
    out["window"] = [start, end]
    out["leader"] = sampler.window(start, end, "manager")
    if sampler.pids.get("followers"):
        out["followers"] = sampler.window(start, end, "followers")
    out["others_cpu_pct"] = sampler.others(start, end)
    out["duration_s"] = round(end - start, 1)
    if not any(e["count"] for e in out["endpoints"].values()):
        raise RuntimeError(f"no request of the clients succeeded: {load.errors[:5]}")
    return out


# ---- the API alone at full size (--store-only) ------------------------------------------

class StoreServer:
    """bench/api_load_server.py: the real API over an in-memory store, no Raft or controllers."""

    def __init__(self, tmp: Path) -> None:
        self.socket = tmp / "api.sock"
        self.log = tmp / "api-server.log"
        self.client = Client(f"unix://{self.socket}", timeout=120.0)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    def start(self, args: argparse.Namespace) -> int:
        argv = [sys.executable, str(SERVER), "--socket", str(self.socket),
                "--nodes", str(args.nodes), "--tasks", str(args.tasks),
                "--services", str(args.services),
                "--update-services", str(args.update_services),
                "--update-parallelism", str(args.update_parallelism),
                "--update-delay", str(args.update_delay)]
        if args.profile:
            argv += ["--profile", str(args.profile)]
        with open(self.log, "wb") as log_file:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                         stderr=log_file, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the store-only API server exited; see {self.log}")
        self.ready = json.loads(line)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)


def run_store_only(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = StoreServer(tmp)
    sampler: Sampler | None = None
    try:
        log(f"store-only: filling {args.nodes} nodes, {args.services} services, "
            f"{args.tasks} tasks")
        pid = server.start(args)
        sampler = Sampler({"manager": [pid], "agents": []})
        sampler.start()
        result: dict[str, Any] = {"config": config(args),
                                  "cluster": {"fill_s": server.ready.get("fill_s")}}
        names = [f"sim{i:02d}" for i in range(args.services)]
        result["load"] = load_phase(args, server, sampler, [], names)
        if args.cli_services:
            result["cli"] = cli_phase(args, server)
        return result
    finally:
        if sampler is not None:
            sampler.stop()
        server.stop()


# ---- main ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, help="default 200; --store-only 5,000")
    p.add_argument("--tasks", type=int, help="default 2,000; --store-only 100,000")
    p.add_argument("--services", type=int,
                   help="tasks are split over them; default 20, --store-only 1,000")
    p.add_argument("--store-only", action="store_true",
                   help="the API alone over an in-memory store at full size, no Raft, no "
                        "controllers: a rolling update played by store writes "
                        "(bench/api_load_server.py)")
    p.add_argument("--managers", type=int, default=1, choices=(1, 3))
    p.add_argument("--procs", type=int, default=2, help="fake-node processes")
    p.add_argument("--nice", type=int, default=0,
                   help="run the fake-node processes this much nicer than the managers (in a "
                        "real swarm the nodes are other machines)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--spread", action="store_true",
                   help="listers round robin over every manager (each serves reads from its "
                        "own replica), not all on the leader; writes stay on the leader")
    p.add_argument("--new-connections", action="store_true",
                   help="a new connection per request (default: one kept per client)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--update-services", type=int, default=1,
                   help="services kept in a rolling update during the load")
    p.add_argument("--update-parallelism", type=int, default=2)
    p.add_argument("--update-delay", type=float, default=1.0, help="seconds")
    p.add_argument("--write-interval", type=float, default=0.1,
                   help="seconds between the writer's writes")
    p.add_argument("--cli-services", type=int, default=1000,
                   help="services in all for the docker CLI part (0: skip it)")
    p.add_argument("--cli-replicas", type=int, default=1)
    p.add_argument("--cli-runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    p.add_argument("--quick", action="store_true",
                   help="20 nodes, 100 tasks, 10 clients, 5 s of load, 40 services for the CLI")
    p.add_argument("--profile", type=Path, default=None, metavar="PATH",
                   help="with --store-only: cProfile the API server (pstats file; its top "
                        "functions are printed)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args(argv)
    sizes = (5000, 100_000, 1000) if args.store_only else (200, 2000, 20)
    if args.quick:
        sizes = (200, 2000, 40) if args.store_only else (20, 100, 5)
        args.procs, args.clients, args.duration, args.cli_runs = 1, 10, 5.0, 2
        args.cli_services = 40
    for name, size in zip(("nodes", "tasks", "services"), sizes, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, size)
    args.procs = max(1, min(args.procs, args.nodes))
    return args


def config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in (
        "nodes", "tasks", "services", "managers", "store_only", "clients", "spread",
        "duration",
        "update_services", "update_parallelism", "update_delay", "write_interval",
        "cli_services", "cli_replicas", "cli_runs", "quick", "nice")} | {
        "keep_alive": not args.new_connections, "cpus": os.cpu_count(),
        "loadavg_at_start": loadavg()}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    cluster = Cluster(tmp, args.managers)
    agents = AgentProcs(tmp, args.nodes, args.procs, 16, args.nice)
    sampler: Sampler | None = None
    try:
        log(f"managers: {args.managers} shoald on {LOOPBACK}, state in {tmp}")
        cluster.start(log)
        mgr = cluster.leader()
        assert mgr.proc is not None
        followers = [m for m in cluster.managers if m is not mgr]
        sampler = Sampler({"manager": [mgr.proc.pid], "agents": [],
                           "followers": [m.proc.pid for m in followers if m.proc]})
        sampler.start()
        log(f"joining {args.nodes} fake nodes")
        join = join_phase(cluster, mgr, agents, sampler, args.timeout, log)
        log(f"creating {args.services} services, {args.tasks} tasks")
        converge = run_phase(cluster, mgr, agents, args.tasks, args.services, 1.0,
                             args.timeout, log)
        names = [f"sim{i:02d}" for i in range(args.services)]
        ids = [str(mgr.client.get(f"/services/{n}")["ID"]) for n in names]
        result: dict[str, Any] = {
            "config": config(args),
            "cluster": {"ready_s": join["ready_s"], "running_s": converge["running_s"],
                        "leader": mgr.name}}
        watch = Watch(cluster, args.nodes, 2.0)
        watch.start()
        spread = [str(m.socket) for m in [mgr, *followers]] if args.spread else []
        result["load"] = load_phase(args, mgr, sampler, ids, names, spread)
        time.sleep(2.5)  # a watch sample after the end
        watch.stop()
        health = watch.summary(*result["load"]["window"])
        result["load"]["nodes"] = {k: health[k] for k in (
            "max_down", "ever_down", "leaders_seen", "ticks_without_leader", "samples",
            "heartbeat_age_max_s")}
        # What a node's heartbeat period is at this size (each node's is within ±10 %).
        result["load"]["nodes"]["heartbeat_period_s"] = heartbeat_period(
            DEFAULT_HEARTBEAT_NS / 1e9, args.nodes + args.managers)
        if args.cli_services:
            added = add_services(args, mgr, args.services + 1)
            result["cli"] = added | cli_phase(args, mgr)
        return result
    finally:
        if sampler is not None:
            sampler.stop()
        try:
            agents.stop()
        finally:
            cluster.stop()


def goals(result: dict[str, Any]) -> dict[str, bool]:
    load = result["load"]
    out = {f"{k}_p99_le_1s": v["p99_ms"] <= GOAL_P99_MS for k, v in load["endpoints"].items()}
    out["no_write_over_1s"] = load["writer"]["over_1s"] == 0
    cli = result.get("cli") or {}
    if cli.get("docker"):
        out["docker_service_ls_le_1s"] = cli["docker"]["median_s"] <= GOAL_CLI_S
    return out


def table(result: dict[str, Any]) -> str:
    c, load = result["config"], result["load"]
    where = "the API alone (store-only)" if c["store_only"] else f"{c['managers']} manager(s)"
    lines = [f"API under load: {c['nodes']} nodes, {c['tasks']} tasks, {c['services']} services,"
             f" {where}, {c['clients']} clients "
             f"({'kept' if c['keep_alive'] else 'new'} connections), {load['duration_s']} s",
             f"{'':28} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>8}"]
    for name, label in (("services", "GET /services?status=true"),
                        ("tasks", "GET /tasks?filters=service")):
        e = load["endpoints"][name]
        lines.append(f"{label:28} {e['p50_ms']:8.1f} {e['p95_ms']:8.1f} {e['p99_ms']:8.1f} "
                     f"{e['max_ms']:8.1f} {e['requests_per_s']:8.1f}")
    for i, e in load.get("by_manager", {}).items():
        label = f"  both lists, {'leader' if i == '0' else f'follower {i}'}"
        lines.append(f"{label:28} {e['p50_ms']:8.1f} {e['p95_ms']:8.1f} {e['p99_ms']:8.1f} "
                     f"{e['max_ms']:8.1f} {e['requests_per_s']:8.1f}")
    w = load["writer"]
    lines.append(f"{'writer (service update)':28} {w['p50_ms']:8.1f} {w['p95_ms']:8.1f} "
                 f"{w['p99_ms']:8.1f} {w['max_ms']:8.1f} {w['writes_per_s']:8.1f}"
                 f"   over 1 s: {w['over_1s']}")
    u, lead = load["rolling_updates"], load["leader"]
    rolled = "played by the server (store-only)" if c["store_only"] else \
        f"{u['started']} started, {u['completed']} completed" + "".join(
            f", one at {r} tasks replaced" for r in u["unfinished_tasks_replaced"])
    lines.append(f"rolling updates: {rolled}; leader "
                 f"{lead['cpu_pct']:.0f} % of a core, RSS {lead['rss_peak_mib']:.0f} MiB; "
                 + (f"followers {load['followers']['cpu_pct']:.0f} % of a core; "
                    if "followers" in load else "") +
                 f"errors {load['error_count']}")
    nodes = load.get("nodes")
    if nodes is not None:
        lines.append(f"fake nodes seen Down during the load: at most {nodes['max_down']} at once, "
                     f"{nodes['ever_down']} ever; leaders seen {nodes['leaders_seen']}; longest "
                     f"a node went unheard by the leader {nodes['heartbeat_age_max_s']} s "
                     f"(heartbeat period {nodes['heartbeat_period_s']} s)")
    cli = result.get("cli")
    if cli:
        lines.append(f"service ls on {cli['services']} services: "
                     + (f"docker {cli['docker']['median_s']:.3f} s median, "
                        f"{cli['docker']['max_s']:.3f} s max; " if cli.get("docker") else "")
                     + f"shoal {cli['shoal']['median_s']:.3f} s median; the API's part "
                     f"{cli['api_services_status']['median_s']:.3f} s")
        if cli.get("docker_requests"):
            lines.append(f"  the docker CLI requested: {cli['docker_requests']}")
    lines.append("goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                       for k, v in result["goals"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="shoal-apiload-"))
    try:
        result = run_store_only(args, tmp) if args.store_only else run(args, tmp)
    except (RuntimeError, TimeoutError, APIError, OSError) as err:
        log(f"measurement failed: {err!r}; kept {tmp}")
        return 1
    if args.keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    result["goals"] = goals(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    if args.profile and args.profile.exists():
        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("tottime").print_stats(15)
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
