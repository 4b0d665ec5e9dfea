"""The lab: several Shoal hosts on one machine, each a network namespace running its shoald.

Host `<h>` of lab `<NAME>` is the namespace `shl-<NAME>-<h>` with one interface, `lab0`, on a
private switch: a bridge in a namespace of its own, `shl-<NAME>-sw`. The veth pairs are made
inside the switch namespace with their peers created directly in the host namespaces, so the
machine's own namespace never holds a lab interface, address or route, not even briefly.
Addresses come from 198.18.0.0/15, one /24 per lab. Hosts share the filesystem: each one's
data root, API socket and log live under `${SHOAL_LAB_ROOT:-/var/tmp/shoal-lab}/<NAME>/<h>/`,
and `lab.json` there records the plan, the addresses and the daemons' PIDs.

All hosts use one container engine: a private dockerd the lab starts in the machine's own
network namespace, under `<NAME>/engine/` (socket `<NAME>/engine/docker.sock`, see
shoal/engine.py) with the test images loaded, or an engine given to `up`.

The plan and the state file are lab_state.py; the daemons and namespaces through ip(8) and
/proc, lab_procs.py; here, building a lab and the operations on it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal as signals
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from shoal import engine as enginemod
from shoal import engine_api, procs
from shoal.client import APIError
from shoal.lab_procs import (
    STOP_TIMEOUT,
    ip,
    lab_namespaces,
    log_tail,
    netns_pids,
    ours,
    start_daemon,
    terminate,
    wait_exit,
)
from shoal.lab_state import (
    HostState,
    LabError,
    LabState,
    host_state,
    lab_root,
    load,
    namespace,
    plan,
    root_lock,
    save,
    state_dir,
    try_load,
    validate_name,
)
from worker.executor.docker import files as task_files

HOST_IFNAME = "lab0"
SWARM_PORT = 2377
PING_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL

T = TypeVar("T")


# ---- building the lab --------------------------------------------------------------------

def _create_network(state: LabState) -> None:
    sw, prefix = state.switch_namespace, ipaddress.IPv4Network(state.subnet).prefixlen
    ip("netns", "add", sw)
    ip("-n", sw, "link", "set", "lo", "up")
    ip("-n", sw, "link", "add", state.bridge, "type", "bridge", "stp_state", "0")
    ip("-n", sw, "link", "set", state.bridge, "up")
    _switch_without_netfilter(sw)
    for host in state.hosts:
        _plumb_host(state, host, prefix)


def _switch_without_netfilter(sw: str) -> None:
    """A switch does not filter: with br_netfilter loaded (the engine loads it) every frame
    crossing the lab's bridge would go through conntrack and the IP hooks of the switch's
    namespace, a cost no real underlay has (it showed in the overlay benchmark's profile)."""
    for key in ("iptables", "ip6tables", "arptables"):
        subprocess.run(["ip", "netns", "exec", sw, "sysctl", "-q", "-w",
                        f"net.bridge.bridge-nf-call-{key}=0"], capture_output=True, check=False)


def _plumb_host(state: LabState, host: HostState, prefix: int) -> None:
    """The host's namespace and its veth to the switch (made inside the switch namespace)."""
    sw, port = state.switch_namespace, f"s{state.name}-{host.name}"
    ip("netns", "add", host.namespace)
    ip("-n", sw, "link", "add", port, "type", "veth",
        "peer", "name", HOST_IFNAME, "netns", host.namespace)
    ip("-n", sw, "link", "set", port, "master", state.bridge, "up")
    ip("-n", host.namespace, "link", "set", "lo", "up")
    ip("-n", host.namespace, "addr", "add", f"{host.address}/{prefix}", "dev", HOST_IFNAME)
    ip("-n", host.namespace, "link", "set", HOST_IFNAME, "up")


def _setup_engine(state: LabState, given: str | None, save: Callable[[], None]) -> None:
    """Start the lab's dockerd (unless an engine was given) and load the test images."""
    url = state.engine or ""
    try:
        if given is None:
            engine = enginemod.start_engine(Path(state.state_dir) / "engine", state.name)
            state.engine_pid = engine.pid
            save()
        elif not engine_api.ping(url):
            raise LabError(f"engine {url} does not answer GET /_ping; start it, or leave out "
                           "the engine to have the lab start its own dockerd")
        engine_api.ensure_images(url)
    except enginemod.EngineError as exc:
        raise LabError(str(exc)) from exc


def _remove_engine(name: str, state: LabState | None) -> None:
    """Stop and delete the lab's own dockerd, or remove the lab's containers from a given one."""
    root = state_dir(name) / "engine"
    try:
        if root.exists():
            enginemod.purge_engine(root, name, state.engine_pid if state else None)
            return
    except enginemod.EngineError as exc:
        raise LabError(f"lab {name!r}: {exc}") from exc
    if state is None or state.engine is None:
        return
    for node_id in filter(None, (host.node_id for host in state.hosts)):
        with contextlib.suppress(enginemod.EngineError):  # an engine gone has none left
            engine_api.remove_containers(state.engine, f"{engine_api.SWARM_NODE_LABEL}={node_id}")


def _wait_ping(hosts: Sequence[HostState], timeout: float = PING_TIMEOUT) -> None:
    pending = list(hosts)

    def check() -> bool:
        for host in list(pending):
            if host.pid is None or not procs.alive(host.pid):
                raise LabError(f"{host.name}: shoald exited; see {host.log_file}"
                               + log_tail(host))
            try:
                host.client(timeout=2.0).get("/_ping")
                pending.remove(host)
            except APIError:
                pass  # not answering yet: the caller polls again until its deadline
        return not pending

    if not procs.wait_for(check, timeout, interval=0.1):
        names = ", ".join(f"{h.name} (log {h.log_file})" for h in pending)
        raise LabError(f"no answer to GET /_ping within {timeout:.0f} s from {names}")


def _swarm_call(host: HostState, method: str, path: str, body: Any = None) -> Any:
    try:
        return host.client(timeout=60.0).request(method, path, body=body)
    except APIError as exc:
        raise LabError(f"{host.name}: {method} {path} failed: {exc.message}; "
                       f"see {host.log_file}") from exc


def _form_swarm(state: LabState, save: Callable[[], None]) -> None:
    _wait_ping(state.hosts)
    first = state.hosts[0]
    listen = f"0.0.0.0:{SWARM_PORT}"
    node_id = _swarm_call(first, "POST", "/swarm/init",
                          {"AdvertiseAddr": first.address, "ListenAddr": listen})
    first.node_id = node_id if isinstance(node_id, str) else None
    tokens = _swarm_call(first, "GET", "/swarm")["JoinTokens"]
    for host in state.hosts[1:]:  # one at a time, managers first
        token = tokens["Manager" if host.role == "manager" else "Worker"]
        _swarm_call(host, "POST", "/swarm/join", {
            "RemoteAddrs": [f"{first.address}:{SWARM_PORT}"], "JoinToken": token,
            "AdvertiseAddr": host.address, "ListenAddr": listen})
    for host in state.hosts:
        info = _swarm_call(host, "GET", "/info")
        host.node_id = (info.get("Swarm") or {}).get("NodeID") or host.node_id
    save()
    _wait_ready(state)


def _not_ready(state: LabState) -> list[HostState]:
    nodes = _swarm_call(state.hosts[0], "GET", "/nodes") or []

    def ready(host: HostState) -> bool:
        for node in nodes:
            status = node.get("Status") or {}
            if node.get("ID") == host.node_id or status.get("Addr") == host.address:
                return bool(status.get("State") == "ready")
        return False

    return [host for host in state.hosts if not ready(host)]


def _wait_ready(state: LabState, timeout: float = READY_TIMEOUT) -> None:
    def all_ready() -> bool:
        try:
            return not _not_ready(state)
        except LabError:  # e.g. m1 busy while a manager joins: ask again
            return False

    if procs.wait_for(all_ready, timeout, interval=0.2) is None:
        late = ", ".join(f"{h.name} (log {h.log_file})" for h in _not_ready(state))
        raise LabError(f"nodes not ready within {timeout:.0f} s: {late}")


# ---- public API --------------------------------------------------------------------------

def up(name: str, managers: int = 1, workers: int = 0, *, form_swarm: bool = True,
       daemon_argv: Sequence[str] | None = None, engine: str | None = None) -> LabState:
    """Create lab `name`: the engine, the switch, the hosts, one shoald each, and a swarm.

    `engine` (unix:///PATH) is a running Docker engine for the hosts; without it the lab
    starts its own dockerd. The test images (shoal.engine.images_dir()) are loaded into it.
    `daemon_argv` replaces the shoald command line (tests); `{data_root}`, `{socket}`,
    `{hostname}` and `{engine}` in it are replaced per host (a node's hostname is its host's
    name, `m1`).
    On failure the lab is left for inspection: `down(name)` removes it.
    """
    validate_name(name)
    if managers < 1 or workers < 0 or managers + workers > 250:
        raise LabError("a lab needs at least 1 manager, no negative count, at most 250 hosts")
    if existing := lab_namespaces(name):
        raise LabError(f"lab {name!r} already exists (namespaces {existing}); "
                       f"remove it with `shoal lab down --name {name}`")
    lab_root().mkdir(parents=True, exist_ok=True)
    with root_lock():  # labs brought up at once (parallel tests) pick different subnets
        state = plan(name, managers, workers, daemon_argv, form_swarm, engine)
        if len(longest := max((h.api_socket for h in state.hosts), key=len)) > MAX_SOCKET_PATH:
            raise LabError(f"socket path {longest} is too long for a unix socket; "
                           "set SHOAL_LAB_ROOT to a shorter directory")
        try:
            os.mkdir(state.state_dir)
        except FileExistsError:
            raise LabError(f"lab {name!r} already exists ({state.state_dir}); "
                           f"remove it with `shoal lab down --name {name}`") from None
        save(state)
    try:
        _setup_engine(state, engine, lambda: save(state))
        _create_network(state)
        for host in state.hosts:
            host.pid = start_daemon(host)
            save(state)
        if form_swarm:
            _form_swarm(state, lambda: save(state))
    except LabError as exc:
        raise LabError(f"lab {name!r}: {exc}\nThe lab is left as it is for inspection; "
                       f"`shoal lab down --name {name}` removes it.") from exc
    return status(name)


def status(name: str) -> LabState:
    """The recorded lab, with each host's `alive` refreshed."""
    state = load(name)
    for host in state.hosts:
        host.alive = ours(host)
    return state


def down(name: str) -> None:
    """Stop every daemon and process of the lab, delete its namespaces and state directory.

    The lab's own dockerd is stopped (its containers removed first) and its data deleted; on
    an engine given to `up`, only containers labelled with the lab's node IDs are removed.

    Works on a half-created lab; raises LabError when there is nothing of `name` to remove.
    """
    validate_name(name)
    sdir, existing, state = state_dir(name), lab_namespaces(name), try_load(name)
    if not sdir.exists() and not existing:
        raise LabError(f"no lab named {name!r}: no {sdir} and no namespace shl-{name}-*")
    hosts = state.hosts if state else []
    terminate(h.pid for h in hosts if h.pid is not None and ours(h))
    switch = namespace(name, "sw")
    host_nss = [h.namespace for h in hosts] + [ns for ns in existing if ns != switch]
    for ns in dict.fromkeys(host_nss + [switch]):
        terminate(netns_pids(ns))
    _remove_engine(name, state)  # after the daemons, so no agent starts a container again
    for host in hosts:  # the tmpfs of its tasks' secrets, which outlive a killed daemon
        _remove_task_files(host)
    present = set(lab_namespaces(name))  # a stopping shoald removes its overlay namespaces
    for ns in dict.fromkeys(host_nss + [switch]):  # the switch namespace last
        if ns in present:
            ip("netns", "del", ns)
    shutil.rmtree(sdir, ignore_errors=True)
    left = lab_namespaces(name)
    if left or sdir.exists():
        raise LabError(f"lab {name!r} not fully removed: namespaces {left}, {sdir}")


def _remove_task_files(host: HostState) -> None:
    try:
        node_id = json.loads((Path(host.data_root) / "state.json").read_text())["node_id"]
    except (OSError, ValueError, KeyError):
        return  # never joined a swarm: no tasks
    try:
        task_files.prune_node(task_files.BASE, node_id)
    except OSError as err:
        raise LabError(f"removing the task files of {host.name}: {err}") from err


def add_host(name: str, host: str, role: str = "worker") -> HostState:
    """Add a host to a running lab (its shoald started, not yet in the swarm): a node that
    joins later. The caller joins it (`POST /swarm/join` on its API)."""
    validate_name(name)
    state = load(name)
    if any(h.name == host for h in state.hosts) or not re.fullmatch(r"[mw][0-9]+", host):
        raise LabError(f"lab {name!r}: host name {host!r} is taken or not like m4/w3")
    new = host_state(state, host, role, len(state.hosts), None)
    state.hosts.append(new)
    save(state)
    _plumb_host(state, new, ipaddress.IPv4Network(state.subnet).prefixlen)
    new.pid = start_daemon(new)
    save(state)
    _wait_ping([new])
    new.alive = ours(new)
    return new


def stop_host(name: str, host: str) -> HostState:
    """Stop one host's shoald (SIGTERM, then SIGKILL after 10 s); its data root stays."""
    state = load(name)
    h = state.host(host)
    if h.pid is not None and ours(h):
        terminate([h.pid])
    h.pid, h.alive = None, False
    save(state)
    return h


def start_host(name: str, host: str, wait: bool = True,
               extra_argv: Sequence[str] = ()) -> HostState:
    """Start one host's shoald again on its data root; wait for its API if the lab has a swarm.
    `extra_argv`: flags for this start only (e.g. --force-new-cluster)."""
    state = load(name)
    h = state.host(host)
    if ours(h):
        raise LabError(f"{name}/{host}: shoald is already running (pid {h.pid})")
    h.pid = start_daemon(h, extra_argv)
    save(state)
    if wait and state.swarm:
        _wait_ping([h])
    h.alive = ours(h)
    return h


def kill_host(name: str, host: str, signal: int = signals.SIGKILL) -> HostState:
    """Send `signal` to one host's shoald (SIGKILL: a crash; SIGSTOP: a hang)."""
    h = status(name).host(host)
    if h.pid is None or not h.alive:
        raise LabError(f"{name}/{host}: shoald is not running; start it with start_host")
    os.kill(h.pid, signal)
    if signal == signals.SIGKILL:
        wait_exit([h.pid], STOP_TIMEOUT)
        h.alive = False
    return h


def exec_in(name: str, host: str, argv: Sequence[str],
            **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """Run `argv` in the host's namespace (keyword arguments go to subprocess.run)."""
    h = load(name).host(host)
    if not argv:
        raise LabError("no command given to run in the lab host")
    return subprocess.run(["ip", "netns", "exec", h.namespace, *argv], **kwargs)
