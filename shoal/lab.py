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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal as signals
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from shoal import engine as enginemod
from shoal import procs
from shoal.client import APIError, Client
from worker.executor.docker import files as task_files

NAME_RE = re.compile(r"[a-z0-9]{1,8}")
LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_ROOT = "/var/tmp/shoal-lab"
HOST_IFNAME = "lab0"
SWARM_PORT = 2377
PING_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL

T = TypeVar("T")


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


# ---- names, paths, state file ------------------------------------------------------------

def lab_root() -> Path:
    return Path(os.environ.get("SHOAL_LAB_ROOT") or DEFAULT_ROOT)


def validate_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise LabError(f"invalid lab name {name!r}: use 1 to 8 characters from a-z and 0-9")


def namespace(name: str, host: str) -> str:
    return f"shl-{name}-{host}"


def state_dir(name: str) -> Path:
    return lab_root() / name


def _save(state: LabState) -> None:
    path = Path(state.state_dir) / "lab.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def _root_lock() -> Iterator[None]:
    with open(lab_root() / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _try_load(name: str) -> LabState | None:
    try:
        return LabState.from_dict(json.loads((state_dir(name) / "lab.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load(name: str) -> LabState:
    validate_name(name)
    state = _try_load(name)
    if state is None:
        raise LabError(f"no lab named {name!r} (no readable {state_dir(name) / 'lab.json'}); "
                       f"create it with `shoal lab up --name {name}`")
    return state


def _pick_subnet(name: str) -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 derived from the name, skipping those other labs here use."""
    others = [_try_load(p.parent.name) for p in lab_root().glob("*/lab.json")]
    used = {other.subnet for other in others if other and other.name != name}
    subnets = list(LAB_NET.subnets(new_prefix=24))
    start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % len(subnets)
    for k in range(len(subnets)):
        subnet = subnets[(start + k) % len(subnets)]
        if str(subnet) not in used:
            return subnet
    raise LabError(f"all {len(subnets)} lab subnets of {LAB_NET} are in use; remove a lab")


def _plan(name: str, managers: int, workers: int, daemon_argv: Sequence[str] | None,
          swarm: bool, engine: str | None) -> LabState:
    sdir = state_dir(name)
    subnet = _pick_subnet(name)
    engine = engine or "unix://" + str(sdir / "engine" / "docker.sock")
    state = LabState(name=name, subnet=str(subnet), switch_namespace=namespace(name, "sw"),
                     bridge=f"b{name}", state_dir=str(sdir), swarm=swarm, hosts=[],
                     engine=engine)
    names = [(f"m{i}", "manager") for i in range(1, managers + 1)]
    names += [(f"w{i}", "worker") for i in range(1, workers + 1)]
    for index, (host, role) in enumerate(names):
        state.hosts.append(_host_state(state, host, role, index, daemon_argv))
    return state


def _host_state(state: LabState, host: str, role: str, index: int,
                daemon_argv: Sequence[str] | None) -> HostState:
    hdir = Path(state.state_dir) / host
    engine = state.engine or ""
    paths = {"data_root": str(hdir / "data"), "socket": str(hdir / "shoal.sock"),
             "hostname": host, "engine": engine,
             "netns_prefix": f"{namespace(state.name, host)}-n"}
    template = daemon_argv or [_shoald(), "--data-root", "{data_root}",
                               "--host", "unix://{socket}", "--hostname", "{hostname}",
                               "--engine", "{engine}", "--netns-prefix", "{netns_prefix}"]
    subnet = ipaddress.IPv4Network(state.subnet)
    return HostState(
        name=host, role=role, namespace=namespace(state.name, host),
        address=str(subnet.network_address + 2 + index), api_socket=paths["socket"],
        data_root=paths["data_root"], log_file=str(hdir / "shoald.log"),
        argv=[arg.format(**paths) for arg in template], engine=engine)


def _shoald() -> str:
    path = Path(sys.executable).parent / "shoald"
    found = str(path) if path.exists() else shutil.which("shoald")
    if found is None:
        raise LabError(f"shoald not found next to {sys.executable} nor on PATH; "
                       "install Shoal in this environment (`make venv`)")
    return found


# ---- ip(8), namespaces, processes --------------------------------------------------------

def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def _lab_namespaces(name: str) -> list[str]:
    """The namespaces that exist now and are named like this lab's (`shl-NAME-sw|mN|wN`, and
    the hosts' overlay namespaces `shl-NAME-HOST-n...`)."""
    pattern = re.compile(rf"shl-{re.escape(name)}-(sw|[mw][0-9]+(-n[0-9a-z]+)?)")
    found = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]
    return [ns for ns in found if pattern.fullmatch(ns)]


def _netns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def _in_namespace(pid: int, ns: str) -> bool:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return False


def _ours(host: HostState) -> bool:
    """Is the recorded PID still our daemon: in the host's namespace, or on its way there?"""
    if host.pid is None or not procs.alive(host.pid):
        return False
    if _in_namespace(host.pid, host.namespace):
        return True
    try:
        cmdline = Path(f"/proc/{host.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return host.data_root in cmdline or host.namespace in cmdline.split("\0")


def _terminate(pids: Iterable[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each process, wait up to `timeout` for all, then SIGKILL the rest."""
    live = [pid for pid in pids if procs.alive(pid)]
    for sigs in ((signals.SIGTERM, signals.SIGCONT), (signals.SIGKILL,)):
        for pid, sig in ((pid, sig) for pid in live for sig in sigs):
            try:
                os.kill(pid, sig)  # SIGCONT: a stopped process acts on SIGTERM only when resumed
            except ProcessLookupError:
                pass
        live = _wait_exit(live, timeout)
        if not live:
            return
    raise LabError(f"processes {live} survived SIGKILL for {timeout:.0f} s")


def _wait_exit(pids: list[int], timeout: float) -> list[int]:
    procs.wait_for(lambda: not any(procs.alive(pid) for pid in pids), timeout)
    return [pid for pid in pids if procs.alive(pid)]


def _start_daemon(host: HostState, extra_argv: Sequence[str] = ()) -> int:
    Path(host.data_root).mkdir(parents=True, exist_ok=True)
    Path(host.api_socket).unlink(missing_ok=True)  # stale: its daemon is not running
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(host.log_file, "ab") as log:
        # nsenter --net, not `ip netns exec`: the latter gives the daemon a private mount
        # namespace, so the network namespaces it mounts under /run/netns vanish with it
        # (a restart would find empty files), unlike on a real host.
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.namespace}",
                                 *host.argv, *extra_argv],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    procs.track(proc)
    # nsenter enters the namespace, then execs the daemon; wait for the first step.
    procs.wait_for(lambda: not procs.alive(proc.pid) or
                   _in_namespace(proc.pid, host.namespace), 5.0)
    return proc.pid


def _log_tail(host: HostState, lines: int = 5) -> str:
    try:
        tail = Path(host.log_file).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    {line}" for line in tail)


# ---- building the lab --------------------------------------------------------------------

def _create_network(state: LabState) -> None:
    sw, prefix = state.switch_namespace, ipaddress.IPv4Network(state.subnet).prefixlen
    _ip("netns", "add", sw)
    _ip("-n", sw, "link", "set", "lo", "up")
    _ip("-n", sw, "link", "add", state.bridge, "type", "bridge", "stp_state", "0")
    _ip("-n", sw, "link", "set", state.bridge, "up")
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
    _ip("netns", "add", host.namespace)
    _ip("-n", sw, "link", "add", port, "type", "veth",
        "peer", "name", HOST_IFNAME, "netns", host.namespace)
    _ip("-n", sw, "link", "set", port, "master", state.bridge, "up")
    _ip("-n", host.namespace, "link", "set", "lo", "up")
    _ip("-n", host.namespace, "addr", "add", f"{host.address}/{prefix}", "dev", HOST_IFNAME)
    _ip("-n", host.namespace, "link", "set", HOST_IFNAME, "up")


def _setup_engine(state: LabState, given: str | None, save: Callable[[], None]) -> None:
    """Start the lab's dockerd (unless an engine was given) and load the test images."""
    url = state.engine or ""
    try:
        if given is None:
            engine = enginemod.start_engine(Path(state.state_dir) / "engine", state.name)
            state.engine_pid = engine.pid
            save()
        elif not enginemod.ping(url):
            raise LabError(f"engine {url} does not answer GET /_ping; start it, or leave out "
                           "the engine to have the lab start its own dockerd")
        enginemod.ensure_images(url)
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
            enginemod.remove_containers(state.engine, f"{enginemod.SWARM_NODE_LABEL}={node_id}")


def _wait_ping(hosts: Sequence[HostState], timeout: float = PING_TIMEOUT) -> None:
    pending = list(hosts)

    def check() -> bool:
        for host in list(pending):
            if host.pid is None or not procs.alive(host.pid):
                raise LabError(f"{host.name}: shoald exited; see {host.log_file}"
                               + _log_tail(host))
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
    if existing := _lab_namespaces(name):
        raise LabError(f"lab {name!r} already exists (namespaces {existing}); "
                       f"remove it with `shoal lab down --name {name}`")
    lab_root().mkdir(parents=True, exist_ok=True)
    with _root_lock():  # labs brought up at once (parallel tests) pick different subnets
        state = _plan(name, managers, workers, daemon_argv, form_swarm, engine)
        if len(longest := max((h.api_socket for h in state.hosts), key=len)) > MAX_SOCKET_PATH:
            raise LabError(f"socket path {longest} is too long for a unix socket; "
                           "set SHOAL_LAB_ROOT to a shorter directory")
        try:
            os.mkdir(state.state_dir)
        except FileExistsError:
            raise LabError(f"lab {name!r} already exists ({state.state_dir}); "
                           f"remove it with `shoal lab down --name {name}`") from None
        _save(state)
    try:
        _setup_engine(state, engine, lambda: _save(state))
        _create_network(state)
        for host in state.hosts:
            host.pid = _start_daemon(host)
            _save(state)
        if form_swarm:
            _form_swarm(state, lambda: _save(state))
    except LabError as exc:
        raise LabError(f"lab {name!r}: {exc}\nThe lab is left as it is for inspection; "
                       f"`shoal lab down --name {name}` removes it.") from exc
    return status(name)


def status(name: str) -> LabState:
    """The recorded lab, with each host's `alive` refreshed."""
    state = _load(name)
    for host in state.hosts:
        host.alive = _ours(host)
    return state


def down(name: str) -> None:
    """Stop every daemon and process of the lab, delete its namespaces and state directory.

    The lab's own dockerd is stopped (its containers removed first) and its data deleted; on
    an engine given to `up`, only containers labelled with the lab's node IDs are removed.

    Works on a half-created lab; raises LabError when there is nothing of `name` to remove.
    """
    validate_name(name)
    sdir, existing, state = state_dir(name), _lab_namespaces(name), _try_load(name)
    if not sdir.exists() and not existing:
        raise LabError(f"no lab named {name!r}: no {sdir} and no namespace shl-{name}-*")
    hosts = state.hosts if state else []
    _terminate(h.pid for h in hosts if h.pid is not None and _ours(h))
    switch = namespace(name, "sw")
    host_nss = [h.namespace for h in hosts] + [ns for ns in existing if ns != switch]
    for ns in dict.fromkeys(host_nss + [switch]):
        _terminate(_netns_pids(ns))
    _remove_engine(name, state)  # after the daemons, so no agent starts a container again
    for host in hosts:  # the tmpfs of its tasks' secrets, which outlive a killed daemon
        _remove_task_files(host)
    present = set(_lab_namespaces(name))  # a stopping shoald removes its overlay namespaces
    for ns in dict.fromkeys(host_nss + [switch]):  # the switch namespace last
        if ns in present:
            _ip("netns", "del", ns)
    shutil.rmtree(sdir, ignore_errors=True)
    left = _lab_namespaces(name)
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
    state = _load(name)
    if any(h.name == host for h in state.hosts) or not re.fullmatch(r"[mw][0-9]+", host):
        raise LabError(f"lab {name!r}: host name {host!r} is taken or not like m4/w3")
    new = _host_state(state, host, role, len(state.hosts), None)
    state.hosts.append(new)
    _save(state)
    _plumb_host(state, new, ipaddress.IPv4Network(state.subnet).prefixlen)
    new.pid = _start_daemon(new)
    _save(state)
    _wait_ping([new])
    new.alive = _ours(new)
    return new


def stop_host(name: str, host: str) -> HostState:
    """Stop one host's shoald (SIGTERM, then SIGKILL after 10 s); its data root stays."""
    state = _load(name)
    h = state.host(host)
    if h.pid is not None and _ours(h):
        _terminate([h.pid])
    h.pid, h.alive = None, False
    _save(state)
    return h


def start_host(name: str, host: str, wait: bool = True,
               extra_argv: Sequence[str] = ()) -> HostState:
    """Start one host's shoald again on its data root; wait for its API if the lab has a swarm.
    `extra_argv`: flags for this start only (e.g. --force-new-cluster)."""
    state = _load(name)
    h = state.host(host)
    if _ours(h):
        raise LabError(f"{name}/{host}: shoald is already running (pid {h.pid})")
    h.pid = _start_daemon(h, extra_argv)
    _save(state)
    if wait and state.swarm:
        _wait_ping([h])
    h.alive = _ours(h)
    return h


def kill_host(name: str, host: str, signal: int = signals.SIGKILL) -> HostState:
    """Send `signal` to one host's shoald (SIGKILL: a crash; SIGSTOP: a hang)."""
    h = status(name).host(host)
    if h.pid is None or not h.alive:
        raise LabError(f"{name}/{host}: shoald is not running; start it with start_host")
    os.kill(h.pid, signal)
    if signal == signals.SIGKILL:
        _wait_exit([h.pid], STOP_TIMEOUT)
        h.alive = False
    return h


def exec_in(name: str, host: str, argv: Sequence[str],
            **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """Run `argv` in the host's namespace (keyword arguments go to subprocess.run)."""
    h = _load(name).host(host)
    if not argv:
        raise LabError("no command given to run in the lab host")
    return subprocess.run(["ip", "netns", "exec", h.namespace, *argv], **kwargs)
