"""Helpers for the overlay convergence tests: a snapshot of what the data plane put in a lab
host's kernel (its network namespaces and its tasks' sandboxes), and the addresses the
resolver in a task answers for a name."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from typing import Any

from shoal.lab import HostState, LabState
from tests.system.overlay import exec_in_task
from tests.system.svc import engine

Snapshot = dict[str, str]

# What is read in a network namespace and in a sandbox. Neighbours: only the permanent ones
# (the plane's); the kernel's own (reachable, stale...) come and go with traffic.
NETNS_COMMANDS = {
    "link": ["ip", "-d", "-o", "link"],
    "addr": ["ip", "-o", "addr"],
    "route": ["ip", "route"],
    "neigh": ["ip", "neigh", "show", "nud", "permanent"],
    "fdb": ["bridge", "fdb", "show", "dev", "vxlan0"],
    "nft": ["nft", "list", "ruleset"],
}
SANDBOX_COMMANDS = {k: v for k, v in NETNS_COMMANDS.items() if k != "fdb"}
_IPV4 = re.compile(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b")
# What changes by itself: the bridge's running timers, an IPv6 address's DAD state.
_VOLATILE = re.compile(r"\b(\w+_timer)\s+[\d.]+|\s(tentative|dadfailed)\b")


def _run(prefix: list[str], argv: list[str]) -> str:
    proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return f"<{' '.join(argv)} failed: {proc.stderr.strip()}>"
    return _VOLATILE.sub("", proc.stdout)


def network_namespaces(host: HostState) -> list[str]:
    """The per-network namespaces of a lab host (`<host ns>-n<netid[:12]>`), sorted."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    prefix = f"{host.namespace}-n"
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return sorted(n for n in names if n.startswith(prefix) and n != f"{prefix}ingress")


def _sorted(key: str, text: str) -> str:
    # The kernel's neighbour and FDB tables are hashes (the neighbour table shared by every
    # namespace of the machine): their listing order changes as other entries come and go.
    return "".join(sorted(text.splitlines(keepends=True))) if key in ("neigh", "fdb") else text


def netns_state(namespace: str) -> Snapshot:
    nsenter = ["nsenter", f"--net=/run/netns/{namespace}"]
    return {key: _sorted(key, _run(nsenter, argv)) for key, argv in NETNS_COMMANDS.items()}


def sandbox_state(lab: LabState, task: dict[str, Any]) -> Snapshot:
    """The task's network namespace (its sandbox's), entered through the task's process."""
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    pid = engine(lab).containers.get(cid).attrs["State"]["Pid"]
    nsenter = ["nsenter", "-t", str(pid), "-n"]
    return {key: _sorted(key, _run(nsenter, argv)) for key, argv in SANDBOX_COMMANDS.items()}


def host_snapshot(lab: LabState, host: HostState, tasks: Iterable[dict[str, Any]]
                  ) -> Snapshot:
    """Everything of the overlay on one host: its host namespace's links, the list of its
    network namespaces and each one's state, and the sandbox of each of `tasks` (the tasks
    running on the host)."""
    in_host = ["nsenter", f"--net=/run/netns/{host.namespace}"]
    links = _run(in_host, ["ip", "-o", "link"])
    # `wg show all` would list every wireguard-go of the machine (their control sockets are
    # files under /var/run/wireguard): ask for this host's interfaces by name.
    wg = re.findall(r"^\d+: (shw\w+):", links, re.MULTILINE)
    snap: Snapshot = {"host links": links,
                      "host routes": _run(in_host, ["ip", "route", "show", "table", "all"]),
                      "host wg": "\n".join(wg_state(_run(in_host, ["wg", "show", name, "dump"]))
                                           for name in wg)}
    namespaces = network_namespaces(host)
    snap["namespaces"] = "\n".join(namespaces)
    for ns in namespaces:
        for key, value in netns_state(ns).items():
            snap[f"{ns} {key}"] = value
    for task in sorted(tasks, key=lambda t: str(t["ID"])):
        for key, value in sandbox_state(lab, task).items():
            snap[f"task {task['ID']} {key}"] = value
    return snap


def wg_state(dump: str) -> str:
    """`wg show all dump` without the private key and what traffic changes (the latest
    handshake, the byte counters)."""
    out = []
    for line in dump.splitlines():
        f = line.split("\t")
        if len(f) == 4:  # interface: private key, public key, port, fwmark
            out.append("\t".join(f[1:]))
        elif len(f) == 8:  # peer: key, psk, endpoint, allowed ips, handshake, rx, tx, keepalive
            out.append("\t".join([f[0], f[2], f[3], f[7]]))
        else:
            out.append(line)
    return "\n".join(sorted(out))


def duplicates(snap: Snapshot) -> dict[str, list[str]]:
    """Lines that appear more than once in one part of a snapshot (a doubled entry)."""
    found = {}
    for key, text in snap.items():
        lines = _entries(text) if key.endswith(" nft") else \
            [line.strip() for line in text.splitlines() if line.strip()]
        doubled = sorted({line for line in lines if lines.count(line) > 1})
        if doubled:
            found[key] = doubled
    return found


def _entries(ruleset: str) -> list[str]:
    """nft rules, each prefixed by its table and chain (braces and hooks repeat)."""
    where, entries = [], []
    for raw in ruleset.splitlines():
        line = raw.strip()
        if line.startswith(("table ", "chain ")):
            where = [*where[:1], line] if line.startswith("chain ") else [line]
        elif line and line != "}" and not line.startswith(("type ", "policy ")):
            entries.append(" / ".join([*where, line]))
    return entries


def differences(before: Snapshot, after: Snapshot) -> dict[str, tuple[str, str]]:
    return {key: (before.get(key, "<missing>"), after.get(key, "<missing>"))
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)}


def resolve(lab: LabState, task: dict[str, Any], name: str) -> set[str] | None:
    """The IPv4 addresses the task's resolver answers for `name` (busybox nslookup); an
    empty set for NXDOMAIN; None when the lookup itself failed (no answer at all)."""
    code, out = exec_in_task(lab, task, "nslookup", name, timeout=5)
    _, _, answer = out.partition("Name:")
    if code != 0:
        return set() if "NXDOMAIN" in out or "can't find" in out else None
    return set(_IPV4.findall(answer))


def resolve_many(lab: LabState, task: dict[str, Any], names: list[str]
                 ) -> dict[str, set[str] | None]:
    """`resolve` of several names in one exec into the task (a round is quicker)."""
    script = "; ".join(f'echo "=== {n}"; nslookup {n}; echo "=== rc $?"' for n in names)
    _, out = exec_in_task(lab, task, "sh", "-c", script, timeout=15)
    found: dict[str, set[str] | None] = dict.fromkeys(names)
    name, body = "", []
    for line in out.splitlines():
        if line.startswith("=== rc "):
            text = "\n".join(body)
            if line == "=== rc 0":
                found[name] = set(_IPV4.findall(text.partition("Name:")[2]))
            elif "NXDOMAIN" in text or "can't find" in text:
                found[name] = set()
        elif line.startswith("=== "):
            name, body = line[4:], []
        else:
            body.append(line)
    return found


def fdb_destinations(fdb: str) -> set[str]:
    """The underlay addresses (`dst`) the VXLAN FDB sends to."""
    return set(re.findall(r"\bdst (\S+)", fdb))


def neigh_addresses(neigh: str) -> set[str]:
    return {line.split()[0] for line in neigh.splitlines() if line.strip()}
