"""`make demo`: a lab swarm of 3 managers and 2 workers, shown working.

It brings the lab up (one private dockerd for its hosts), deploys a service of 5 replicas,
shows its tasks and their logs, scales it, rolls it to a new image, puts a web service on
an overlay network with a port published on every host (the routing mesh), checks the
network with `network doctor`, then kills the leader
and shows a new one taking over with the service still running. The lab stays up afterwards
so you can try the CLI on it; `shoal lab down --name demo` removes it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from shoal import lab as labmod
from shoal.client import APIError

NAME = "demo"
SHOAL = str(Path(sys.executable).parent / "shoal")


def run(host: labmod.HostState, *args: str) -> str:
    print(f"\n$ shoal -H {host.api} {' '.join(args)}")
    out = subprocess.run([SHOAL, "-H", host.api, *args], capture_output=True, text=True)
    print(out.stdout + out.stderr, end="")
    if out.returncode != 0:
        raise SystemExit(f"demo step failed: shoal {' '.join(args)}")
    return out.stdout


def leader(state: labmod.LabState) -> labmod.HostState:
    for host in state.hosts:
        if host.role != "manager" or not labmod.status(NAME).host(host.name).alive:
            continue
        try:
            for node in host.client(timeout=3).get("/nodes"):
                if node.get("ManagerStatus", {}).get("Leader"):
                    return state.host(node["Description"]["Hostname"])
        except APIError:
            continue
    raise SystemExit("no leader found")


def failover(state: labmod.LabState) -> None:
    old = leader(state)
    print(f"\n--- killing the leader's shoald ({old.name}) ---")
    labmod.kill_host(NAME, old.name)
    start = time.monotonic()
    survivor = next(h for h in state.hosts if h.role == "manager" and h.name != old.name)
    while time.monotonic() - start < 15:
        try:
            node = next(n for n in survivor.client(timeout=2).get("/nodes")
                        if n["Description"]["Hostname"] == "w1")
            survivor.client(timeout=2).post(f"/nodes/{node['ID']}/update",
                                            node["Spec"] | {"Labels": {"after": "failover"}},
                                            version=node["Version"]["Index"])
            break
        except (APIError, StopIteration):
            time.sleep(0.1)
    print(f"a write through {survivor.name} was committed "
          f"{time.monotonic() - start:.1f} s after the leader died")
    run(survivor, "node", "ls")
    labmod.start_host(NAME, old.name)
    print(f"\n--- {old.name} restarted; it rejoins as a follower ---")
    time.sleep(3)
    run(survivor, "node", "ls")


HELLO = "echo hello from task $(hostname) on image ${SHOAL_IMAGE:-v1}; exec sleep 3600"


def services(m1: labmod.HostState) -> None:
    print("\n--- a service of 5 replicas, spread over the nodes ---")
    run(m1, "service", "create", "--name", "hello", "--replicas", "5", "--update-parallelism",
        "2", "shoal/busybox:v1", "sh", "-c", HELLO)
    run(m1, "service", "ls")
    run(m1, "service", "ps", "hello")
    run(m1, "service", "logs", "hello")
    run(m1, "service", "scale", "hello=7")
    print("\n--- a rolling update to another image, two tasks at a time ---")
    run(m1, "service", "update", "--image", "shoal/busybox:v2", "hello")
    run(m1, "service", "logs", "--tail", "1", "hello")
    print("\n--- a task that can't be placed says why ---")
    run(m1, "service", "create", "--detach", "--name", "picky", "--constraint",
        "node.labels.zone==b", "shoal/busybox:latest", "sleep", "3600")
    time.sleep(2)
    run(m1, "service", "ps", "--no-trunc", "picky")
    run(m1, "node", "update", "--label-add", "zone=b", "w2")
    time.sleep(3)
    run(m1, "service", "ps", "picky")


def fetch(state: labmod.LabState, client: labmod.HostState, url: str) -> str:
    """GET a URL from inside a lab host's namespace (busybox wget; its -q crashes here)."""
    out = subprocess.run(["ip", "netns", "exec", client.namespace, "busybox", "wget", "-O",
                          "-", url], capture_output=True, text=True, timeout=15)
    return out.stdout.strip() or f"(failed: {out.stderr.strip().splitlines()[-1:]})"


def networks(state: labmod.LabState, m1: labmod.HostState) -> None:
    print("\n--- an overlay network across the hosts, names, and a port published on every "
          "host ---")
    run(m1, "network", "create", "-d", "overlay", "app")
    run(m1, "service", "create", "--name", "web", "--replicas", "3", "--network", "app",
        "--publish", "8080:8080", "shoal/busybox:latest", "sh", "-c",
        "exec httpd -f -p 8080 -h /etc")
    run(m1, "network", "ls")
    client = state.host("w2")
    for host in state.hosts:
        print(f"from {client.name}: GET http://{host.address}:8080/hostname ({host.name}) -> "
              f"{fetch(state, client, f'http://{host.address}:8080/hostname')}")
    time.sleep(2)
    run(m1, "network", "doctor", "app")


def main() -> None:
    if labmod.try_load(NAME) is not None or labmod.lab_namespaces(NAME):
        print(f"removing the previous '{NAME}' lab")
        labmod.down(NAME)
    print("bringing up lab 'demo': 3 managers, 2 workers (network namespaces, one shoald each)")
    state = labmod.up(NAME, 3, 2)
    m1 = state.host("m1")
    run(m1, "node", "ls")
    services(m1)
    networks(state, m1)
    failover(state)
    run(leader(state), "service", "ps", "hello")
    print(f"\nThe lab is still up. Try: shoal -H {m1.api} node ls\n"
          f"Remove it with: .venv/bin/shoal lab down --name {NAME}")


if __name__ == "__main__":
    main()
