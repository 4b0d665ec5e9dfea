"""The docker CLI part of bench/api_load.py: services added up to --cli-services, then the
real docker CLI's `service ls` and our own `shoal service ls` timed against the loaded API,
and what the docker CLI requested (from the API's request counters in /metrics); and the
helpers both parts use."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from api_load_clients import Conn, q

from shoal.client import APIError, Client

IMAGE = "shoal/busybox:latest"
REQUESTS = re.compile(r'^shoal_api_requests_total\{([^}]*)\} ([0-9.e+-]+)$', re.M)


class Target(Protocol):
    """Whose API is loaded: a ManagerProc, or the store-only server (StoreServer)."""

    socket: Path
    client: Client


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def create_one(client: Client, name: str, replicas: int, timeout: float = 60.0) -> str:
    """A create whose outcome was unknown is sent again; 409 then means it committed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(client.post("/services/create", {
                "Name": name, "TaskTemplate": {"ContainerSpec": {"Image": IMAGE}},
                "Mode": {"Replicated": {"Replicas": replicas}}})["ID"])
        except APIError as err:
            if err.status == 409:
                return str(client.get(f"/services/{name}")["ID"])
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_running(client: Client, prefix: str, tasks: int, timeout: float) -> tuple[float, int]:
    """Seconds until the tasks of the services named prefix* run, and how many run then (all,
    or fewer after `timeout`)."""
    start = time.monotonic()
    while True:
        running = sum(s["ServiceStatus"]["RunningTasks"]
                      for s in client.get("/services", status="true")
                      if s["Spec"]["Name"].startswith(prefix))
        if running >= tasks or time.monotonic() - start > timeout:
            return time.monotonic() - start, running
        time.sleep(1.0)


# ---- the docker CLI --------------------------------------------------------------------

def api_counts(mgr: Target) -> dict[str, float]:
    text = mgr.client.raw("GET", "/metrics").decode(errors="replace")
    out: dict[str, float] = {}
    for m in REQUESTS.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = f"{labels.get('method', '?')} {labels.get('route', labels.get('path', '?'))}"
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    began = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    took = time.monotonic() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return took, len(proc.stdout.splitlines()) - 1, proc.stdout


def series(values: list[float]) -> dict[str, float]:
    # To the microsecond: a cached answer on a kept connection takes under half a ms.
    return {"median_s": round(statistics.median(values), 6), "max_s": round(max(values), 6),
            "min_s": round(min(values), 6), "runs": len(values)}


def add_services(args: argparse.Namespace, mgr: Target, existing: int) -> dict[str, Any]:
    """Services added up to --cli-services in all, until their tasks run."""
    extra = max(0, args.cli_services - existing)
    log(f"docker CLI: adding {extra} services of {args.cli_replicas} replica(s) "
        f"({args.cli_services} in all)")
    began = time.monotonic()
    for i in range(extra):
        create_one(mgr.client, f"cli{i:04d}", args.cli_replicas)
    created_s = time.monotonic() - began
    running_s, running = wait_running(mgr.client, "cli", extra * args.cli_replicas,
                                      args.timeout)
    if running < extra * args.cli_replicas:
        log(f"  only {running} of {extra * args.cli_replicas} tasks running after "
            f"{running_s:.0f} s; timing the CLIs all the same")
    return {"replicas_each": args.cli_replicas, "create_s": round(created_s, 1),
            "running_s": round(running_s, 1), "tasks_running": running,
            "tasks_wanted": extra * args.cli_replicas}


def cli_phase(args: argparse.Namespace, mgr: Target) -> dict[str, Any]:
    docker = shutil.which("docker")
    listed = len(mgr.client.get("/services"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    host = f"unix://{mgr.socket}"
    out: dict[str, Any] = {"services": listed}
    conn = Conn(str(mgr.socket), True)
    server = []
    for _ in range(args.cli_runs):
        t0 = time.monotonic()
        status, body = conn.request("GET", q("/services", status="true"))
        server.append(time.monotonic() - t0)
        if status != 200:
            raise RuntimeError(f"GET /services?status=true: {status}")
    conn.close()
    out["api_services_status"] = series(server) | {"bytes": len(body)}
    if docker is None:
        out["docker"] = None
        log("  no docker CLI on PATH: its part is not measured")
    else:
        before = api_counts(mgr)
        timed([docker, "-H", host, "service", "ls"], env)  # first run: what it requests
        after = api_counts(mgr)
        out["docker_requests"] = {k: int(after[k] - before.get(k, 0)) for k in sorted(after)
                                  if after[k] - before.get(k, 0) > 0 and "metrics" not in k}
        runs = [timed([docker, "-H", host, "service", "ls"], env) for _ in range(args.cli_runs)]
        out["docker"] = series([r[0] for r in runs]) | {"rows": runs[-1][1]}
        version = subprocess.run([docker, "--version"], capture_output=True, text=True)
        out["docker_version"] = version.stdout.strip()
    shoal = [str(Path(sys.executable).parent / "shoal"), "-H", host, "service", "ls"]
    runs = [timed(shoal, env) for _ in range(args.cli_runs)]
    out["shoal"] = series([r[0] for r in runs]) | {"rows": runs[-1][1]}
    return out
