"""Small helpers shared by the system tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from shoal.client import Client, UnixConnection
from shoal.lab import HostState, LabState

SHOAL = str(Path(sys.executable).parent / "shoal")
DOCKER = "/usr/local/bin/docker"


def shoal(host: HostState, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `shoal` CLI against a lab host's API."""
    return subprocess.run([SHOAL, "-H", host.api, *args], capture_output=True, text=True,
                          timeout=120)


def run_docker(host: HostState, config: Path | str, *args: str, stdin: str | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real docker CLI against a lab host's API, with a private DOCKER_CONFIG (the
    `docker_config` fixture) and nothing of the caller's environment (contexts, TLS)."""
    env = {"DOCKER_HOST": host.api, "DOCKER_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    return subprocess.run([DOCKER, *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=timeout)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    """The output of a command that must have succeeded."""
    assert out.returncode == 0, (out.args, out.stdout, out.stderr)
    return out.stdout


def fails(out: subprocess.CompletedProcess[str], message: str) -> None:
    """A command that must have failed, saying `message`."""
    assert out.returncode != 0, (out.args, out.stdout)
    assert message in out.stderr, (out.args, out.stderr)


def nodes(client: Client) -> list[dict[str, Any]]:
    result = client.get("/nodes")
    assert isinstance(result, list)
    return result


def by_hostname(client: Client) -> dict[str, dict[str, Any]]:
    return {n["Description"]["Hostname"]: n for n in nodes(client)}


def leader_host(lab: LabState) -> HostState:
    """The manager host whose node is the Raft leader, asked of any live manager."""
    for host in lab.hosts:
        if host.role != "manager" or not host.alive:
            continue
        try:
            for name, node in by_hostname(host.client(timeout=5)).items():
                if node.get("ManagerStatus", {}).get("Leader"):
                    return lab.host(name)
        except Exception:
            continue
    raise AssertionError("no manager reports a leader")


def try_get(client: Client, path: str) -> Any:
    try:
        return client.get(path)
    except Exception:
        return None


def request(host: HostState, method: str, path: str,
            body: Any = None) -> tuple[int, dict[str, str], bytes]:
    conn = UnixConnection(host.api_socket, 30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def run_bench(script: Path, tmp_path: Path, *args: str, timeout: float
              ) -> tuple[Any, subprocess.CompletedProcess[str]]:
    """Run a benchmark script with `args` and `--json` into `tmp_path`; its JSON result and
    the finished process (what it printed). The run must succeed."""
    out = tmp_path / f"{script.stem}.json"
    proc = subprocess.run([sys.executable, str(script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc
