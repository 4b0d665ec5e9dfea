"""A lab's plan and its state file: names, paths, addresses and each host's daemon command,
recorded in `<root>/<NAME>/lab.json` (see shoal/lab.py for what a lab is)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from shoal.client import Client

NAME_RE = re.compile(r"[a-z0-9]{1,8}")
LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_ROOT = "/var/tmp/shoal-lab"


class LabError(Exception):
    """A lab operation failed; the message names the lab or host and what to do next."""


@dataclass
class HostState:
    name: str
    role: str  # "manager" or "worker"
    namespace: str
    address: str
    api_socket: str
    data_root: str
    log_file: str
    argv: list[str]
    pid: int | None = None
    alive: bool = False
    node_id: str | None = None
    engine: str | None = None  # the host's container engine: unix:///PATH

    @property
    def api(self) -> str:
        return "unix://" + self.api_socket

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.api, timeout=timeout)


@dataclass
class LabState:
    name: str
    subnet: str
    switch_namespace: str
    bridge: str
    state_dir: str
    swarm: bool
    hosts: list[HostState]
    engine: str | None = None  # the engine all hosts use (unix:///PATH)
    engine_pid: int | None = None  # its dockerd, when the lab started it (under engine/)

    def host(self, name: str) -> HostState:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise LabError(f"lab {self.name!r} has no host {name!r} (hosts: {known})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        names = {f.name for f in fields(HostState)}
        hosts = [HostState(**{k: v for k, v in h.items() if k in names}) for h in data["hosts"]]
        return cls(**{**data, "hosts": hosts})


def lab_root() -> Path:
    return Path(os.environ.get("SHOAL_LAB_ROOT") or DEFAULT_ROOT)


def validate_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise LabError(f"invalid lab name {name!r}: use 1 to 8 characters from a-z and 0-9")


def namespace(name: str, host: str) -> str:
    return f"shl-{name}-{host}"


def state_dir(name: str) -> Path:
    return lab_root() / name


def save(state: LabState) -> None:
    path = Path(state.state_dir) / "lab.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def root_lock() -> Iterator[None]:
    with open(lab_root() / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def try_load(name: str) -> LabState | None:
    try:
        return LabState.from_dict(json.loads((state_dir(name) / "lab.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(name: str) -> LabState:
    validate_name(name)
    state = try_load(name)
    if state is None:
        raise LabError(f"no lab named {name!r} (no readable {state_dir(name) / 'lab.json'}); "
                       f"create it with `shoal lab up --name {name}`")
    return state


def pick_subnet(name: str) -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 derived from the name, skipping those other labs here use."""
    others = [try_load(p.parent.name) for p in lab_root().glob("*/lab.json")]
    used = {other.subnet for other in others if other and other.name != name}
    subnets = list(LAB_NET.subnets(new_prefix=24))
    start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(subnets)
    for k in range(len(subnets)):
        subnet = subnets[(start + k) % len(subnets)]
        if str(subnet) not in used:
            return subnet
    raise LabError(f"all {len(subnets)} lab subnets of {LAB_NET} are in use; remove a lab")


def plan(name: str, managers: int, workers: int, daemon_argv: Sequence[str] | None,
          swarm: bool, engine: str | None) -> LabState:
    sdir = state_dir(name)
    subnet = pick_subnet(name)
    engine = engine or "unix://" + str(sdir / "engine" / "docker.sock")
    state = LabState(name=name, subnet=str(subnet), switch_namespace=namespace(name, "sw"),
                     bridge=f"b{name}", state_dir=str(sdir), swarm=swarm, hosts=[],
                     engine=engine)
    names = [(f"m{i}", "manager") for i in range(1, managers + 1)]
    names += [(f"w{i}", "worker") for i in range(1, workers + 1)]
    for index, (host, role) in enumerate(names):
        state.hosts.append(host_state(state, host, role, index, daemon_argv))
    return state


def host_state(state: LabState, host: str, role: str, index: int,
                daemon_argv: Sequence[str] | None) -> HostState:
    hdir = Path(state.state_dir) / host
    engine = state.engine or ""
    paths = {"data_root": str(hdir / "data"), "socket": str(hdir / "shoal.sock"),
             "hostname": host, "engine": engine,
             "netns_prefix": f"{namespace(state.name, host)}-n"}
    template = daemon_argv or [shoald(), "--data-root", "{data_root}",
                               "--host", "unix://{socket}", "--hostname", "{hostname}",
                               "--engine", "{engine}", "--netns-prefix", "{netns_prefix}"]
    subnet = ipaddress.IPv4Network(state.subnet)
    return HostState(
        name=host, role=role, namespace=namespace(state.name, host),
        address=str(subnet.network_address + 2 + index), api_socket=paths["socket"],
        data_root=paths["data_root"], log_file=str(hdir / "shoald.log"),
        argv=[arg.format(**paths) for arg in template], engine=engine)


def shoald() -> str:
    path = Path(sys.executable).parent / "shoald"
    found = str(path) if path.exists() else shutil.which("shoald")
    if found is None:
        raise LabError(f"shoald not found next to {sys.executable} nor on PATH; "
                       "install Shoal in this environment (`make venv`)")
    return found
