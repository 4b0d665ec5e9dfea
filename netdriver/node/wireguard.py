"""The node's WireGuard interface: encrypted overlays send their VXLAN through it.

One interface per node (`shw` + the node id's start) in the node's host namespace, with the
node's tunnel address (/16 of the tunnel pool) and one peer per other node (endpoint = the
peer's underlay address and the cluster's listen port, allowed-ips = its tunnel address/32).
The kernel module is used when `ip link add X type wireguard` works, `wireguard-go` otherwise.

Like the rest of the node half, `sync` computes the desired state, reads the actual one
(`wg show IF dump`, `ip -j ...`) and applies the difference, so it serves start-up, restarts
(of shoald or of a crashed wireguard-go) and `network doctor` alike.

Never clear text: besides the interface's own connected route, the tunnel subnet gets a
blackhole route of a high metric in the host namespace. While the interface exists its route
wins; when it is gone (wireguard-go died, the TUN device went with it) packets to tunnel
addresses hit the blackhole instead of following the default route onto the underlay.

Key rotation: an interface has exactly one private key, so there is no make-before-break.
`rotate()` makes a new pair, applies the private key at once (wireguard-go drops the current
sessions) and the new public key goes out through the manager; until a peer has it, the
peer's handshakes fail and packets between the two are dropped, not sent in clear. The gap
is bounded by how fast peers learn the key (heartbeat + assignments); an open TCP connection
rides it out by retransmission, and a peer that learns the key initiates a handshake with
its next (retransmitted) packet. Keeping the old key would not shorten the gap: the peer
must learn the new key before any session with it can exist.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from netdriver.ipam import bare, is_ipv6, wireguard_overhead
from netdriver.node import netns
from netdriver.node.steering import spread_receive
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_LISTEN_PORT = 51820
KEEPALIVE_S = 5
TUNNEL_PREFIX = 16
BLACKHOLE_METRIC = 4242  # above the connected route's 0: only used when the interface is gone
SOCKET_DIR = "/var/run/wireguard"  # wireguard-go's UAPI sockets (fixed in wireguard-go)
START_TIMEOUT_S = 5.0


# --- keys ------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyPair:
    private_key: str  # base64, wg format
    public_key: str
    created_ns: int


def new_key_pair(now_ns: int) -> KeyPair:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return KeyPair(base64.b64encode(private).decode(), public_key_of(private), now_ns)


def public_key_of(private: bytes) -> str:
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(public).decode()


def rotation_due(created_ns: int, rotate_interval: float | None, now_ns: int) -> bool:
    return rotate_interval is not None and now_ns - created_ns >= rotate_interval * 1e9


class KeyStore:
    """The private key file (0600, never sent anywhere) and when it was made."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key_path = directory / "private.key"
        self.created_path = directory / "key_created_ns"

    def load(self) -> KeyPair | None:
        try:
            private_b64 = self.key_path.read_text().strip()
            created = int(self.created_path.read_text().strip())
            public = public_key_of(base64.b64decode(private_b64, validate=True))
        except (FileNotFoundError, ValueError):
            return None  # none yet, or unreadable: a new pair (peers learn it as usual)
        return KeyPair(private_b64, public, created)

    def save(self, pair: KeyPair) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.key_path, pair.private_key + "\n")
        _write_private(self.created_path, f"{pair.created_ns}\n")


def _write_private(path: Path, text: str) -> None:
    # Made 0600 from the start (never world-readable for an instant), then renamed in place.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --- desired and actual state (pure) ---------------------------------------------------

@dataclass(frozen=True)
class PeerConfig:
    endpoint: str                 # "198.18.0.2:51820" ("" = none)
    allowed_ips: frozenset[str]   # {"100.127.0.2/32"}
    keepalive: int                # seconds, 0 = off


@dataclass(frozen=True)
class DumpInterface:
    private_key: str
    public_key: str
    listen_port: int


@dataclass(frozen=True)
class DumpPeer:
    config: PeerConfig
    last_handshake_ns: int  # 0: never


def interface_name(node_id: str) -> str:
    return "shw" + re.sub(r"[^a-z0-9]", "", node_id.lower())[:8]


def endpoint_of(addr: str, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def tunnel_cidr(local_tunnel_addr: str) -> str:
    return f"{bare(local_tunnel_addr)}/{TUNNEL_PREFIX}"


def tunnel_subnet(local_tunnel_addr: str) -> str:
    return str(ipaddress.ip_interface(tunnel_cidr(local_tunnel_addr)).network)


def wg_mtu(underlay_mtu: int, endpoints: Sequence[str] = ()) -> int:
    """The interface's MTU: the IPv6 overhead if any peer is reached over IPv6."""
    return underlay_mtu - wireguard_overhead(any(is_ipv6(_host(e)) for e in endpoints))


def _host(endpoint: str) -> str:
    """"198.18.0.2" of "198.18.0.2:51820", "fd00::2" of "[fd00::2]:51820"."""
    return endpoint.rsplit(":", 1)[0].strip("[]")


def desired_peers(peers: Sequence[cluster_pb2.NetworkPeer], own_node_id: str,
                  own_public_key: str, listen_port: int) -> dict[str, PeerConfig]:
    """Public key → configuration, for every other node that has a key and a tunnel
    address (a node without them has no tunnel yet: nothing can be sent to it)."""
    wanted: dict[str, PeerConfig] = {}
    for peer in peers:
        if not (peer.public_key and peer.tunnel_addr and peer.addr):
            continue
        if peer.node_id == own_node_id or peer.public_key == own_public_key:
            continue
        wanted[peer.public_key] = PeerConfig(
            endpoint_of(peer.addr, listen_port),
            frozenset({f"{bare(peer.tunnel_addr)}/32"}), KEEPALIVE_S)
    return wanted


def parse_dump(text: str) -> tuple[DumpInterface, dict[str, DumpPeer]]:
    """`wg show IF dump`: the interface line, then one tab-separated line per peer."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty wg dump")
    private, public, port = lines[0].split("\t")[:3]
    iface = DumpInterface(_none(private), _none(public), int(port))
    peers: dict[str, DumpPeer] = {}
    for line in lines[1:]:
        key, _psk, endpoint, allowed, handshake, _rx, _tx, keepalive = line.split("\t")[:8]
        ips = frozenset() if allowed == "(none)" else frozenset(allowed.split(","))
        config = PeerConfig(_none(endpoint), ips, 0 if keepalive == "off" else int(keepalive))
        peers[key] = DumpPeer(config, int(handshake) * 1_000_000_000)
    return iface, peers


def _none(field: str) -> str:
    return "" if field == "(none)" else field


def peer_changes(wanted: Mapping[str, PeerConfig],
                 actual: Mapping[str, PeerConfig]) -> list[str]:
    """The `wg set IF ...` arguments that turn `actual` peers into `wanted` ones ([] when
    they agree). `allowed-ips` given to `wg set` replaces the peer's list."""
    args: list[str] = []
    for key in sorted(set(actual) - set(wanted)):
        args += ["peer", key, "remove"]
    for key in sorted(wanted):
        want = wanted[key]
        if actual.get(key) == want:
            continue
        args += ["peer", key, "endpoint", want.endpoint,
                 "allowed-ips", ",".join(sorted(want.allowed_ips)),
                 "persistent-keepalive", str(want.keepalive) if want.keepalive else "off"]
    return args


def interface_changes(want_private_key: str, want_port: int,
                      actual: DumpInterface) -> list[str]:
    """`wg set IF ...` arguments for the private key and listen port ([] when right). The key
    goes as a file path placeholder `@key` so it is never on a command line."""
    args: list[str] = []
    if actual.listen_port != want_port:
        args += ["listen-port", str(want_port)]
    if actual.private_key != want_private_key:
        args += ["private-key", "@key"]
    return args


def address_changes(want_cidr: str | None, actual: Sequence[str]) -> tuple[list[str], list[str]]:
    """(to remove, to add) among the interface's IPv4 addresses (CIDR form)."""
    wanted = {want_cidr} if want_cidr else set()
    return sorted(set(actual) - wanted), sorted(wanted - set(actual))


def peer_differences(wanted: Mapping[str, PeerConfig],
                     actual: Mapping[str, PeerConfig]) -> list[str]:
    """For `network doctor`: each way the actual peers differ from the wanted ones."""
    out = [f"wireguard peer {key}: not wanted" for key in sorted(set(actual) - set(wanted))]
    for key in sorted(wanted):
        want, have = wanted[key], actual.get(key)
        if have is None:
            out.append(f"wireguard peer {key} ({want.endpoint}): missing")
        elif have != want:
            out.append(f"wireguard peer {key}: {_describe(have)}; want {_describe(want)}")
    return out


def _describe(config: PeerConfig) -> str:
    return (f"endpoint {config.endpoint or '(none)'} allowed-ips "
            f"{','.join(sorted(config.allowed_ips)) or '(none)'} keepalive {config.keepalive}")


def underlay_mtu(mtus: Sequence[int], default: int = 1500) -> int:
    """The smallest MTU of the devices that reach the peers (a packet may go to any)."""
    return min(mtus) if mtus else default


# --- running commands in the host namespace --------------------------------------------

class Runner:
    """`ip`/`wg` in the node's host namespace (the current one when `netns_path` is None)."""

    def __init__(self, netns_path: str | None) -> None:
        self.netns_path = netns_path

    async def run(self, *argv: str) -> str:
        if self.netns_path:
            return await netns.nsenter(self.netns_path, *argv)
        return await asyncio.to_thread(_run_here, list(argv))

    async def json(self, *argv: str) -> list[dict[str, object]]:
        out = await self.run("ip", "-j", *argv)
        data = json.loads(out) if out.strip() else []
        return data if isinstance(data, list) else []

    def command(self, *argv: str) -> list[str]:
        """argv of a long-running process started in the namespace."""
        if self.netns_path:
            return ["nsenter", f"--net={self.netns_path}", *argv]
        return list(argv)


def _run_here(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def why(err: BaseException) -> str:
    """A one-line reason for an error (a command's stderr when it has one)."""
    if isinstance(err, subprocess.CalledProcessError):
        text = (err.stderr or err.stdout or "").strip().splitlines()
        cmd = " ".join(str(a) for a in err.cmd[:3])
        return f"{cmd}: {text[-1] if text else f'exit code {err.returncode}'}"
    return str(err) or type(err).__name__


# --- the interface ----------------------------------------------------------------------

class TunnelDown(Exception):
    """The tunnel cannot be brought up; the message says why (it becomes `error`)."""


class WireGuard:
    """The node's WireGuard interface, kept at the state the latest `sync` asked for."""

    def __init__(self, node_id: str, state_dir: str | Path, host_netns: str | None = None,
                 listen_port: int = DEFAULT_LISTEN_PORT,
                 rotate_interval: float | None = None) -> None:
        self.node_id = node_id
        self.ifname = interface_name(node_id)
        self.listen_port = listen_port
        self.rotate_interval = rotate_interval
        self.runner = Runner(host_netns)
        self._dir = Path(state_dir) / "wireguard"
        self._keys = KeyStore(self._dir)
        loaded = self._keys.load()
        self._pair = loaded or new_key_pair(time.time_ns())
        if loaded is None:
            self._keys.save(self._pair)
        self._error = ""
        self._kernel: bool | None = None  # None: not probed yet
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self.mtu = 0  # the interface's MTU after the last sync (0: not set yet)
        self._steered = False  # receive steering asked for on the current device

    # public state

    @property
    def public_key(self) -> str:
        return self._pair.public_key

    @property
    def key_created_ns(self) -> int:
        return self._pair.created_ns

    @property
    def error(self) -> str:
        """Why the tunnel is not up; "" when it is."""
        return self._error

    @property
    def pid(self) -> int | None:
        """wireguard-go's process id (None with the kernel module or when not running)."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    @property
    def socket_path(self) -> str:
        return f"{SOCKET_DIR}/{self.ifname}.sock"

    # operations

    async def sync(self, message: cluster_pb2.AssignmentsMessage,
                   local_tunnel_addr: str) -> None:
        """Bring the interface to what `message` asks (peers) with `local_tunnel_addr`.
        Never raises for a tunnel that cannot come up: `error` says why."""
        async with self._lock:
            if rotation_due(self._pair.created_ns, self.rotate_interval, time.time_ns()):
                self._rotate_keys()
            try:
                await self._converge(message, local_tunnel_addr)
            except TunnelDown as err:
                self._error = str(err)
            except (subprocess.CalledProcessError, OSError, ValueError) as err:
                self._error = why(err)
            else:
                self._error = ""

    async def rotate(self) -> str:
        """A new key pair now; the new public key (apply it with the next `sync`)."""
        async with self._lock:
            self._rotate_keys()
        return self._pair.public_key

    async def peer_status(self) -> list[tuple[str, str, int]]:
        """(public key, endpoint, last handshake ns; 0 never) per peer, for doctor."""
        try:
            _, peers = parse_dump(await self.runner.run("wg", "show", self.ifname, "dump"))
        except (subprocess.CalledProcessError, OSError, ValueError):
            return []
        return [(key, p.config.endpoint, p.last_handshake_ns)
                for key, p in sorted(peers.items())]

    async def check(self, message: cluster_pb2.AssignmentsMessage,
                    local_tunnel_addr: str) -> list[str]:
        """For `network doctor`: how the kernel differs from what `sync(message, ...)` would
        make it, without changing anything ([] when it agrees)."""
        try:
            iface, peers = parse_dump(await self.runner.run("wg", "show", self.ifname, "dump"))
        except (subprocess.CalledProcessError, OSError, ValueError):
            reason = f" ({self._error})" if self._error else ""
            return [f"wireguard interface {self.ifname}: missing{reason}"]
        out: list[str] = []
        if iface.public_key != self.public_key:
            out.append(f"wireguard {self.ifname} public key {iface.public_key or '(none)'}; "
                       f"want {self.public_key}")
        if iface.listen_port != self.listen_port:
            out.append(f"wireguard {self.ifname} listen port {iface.listen_port}; "
                       f"want {self.listen_port}")
        wanted = desired_peers(message.peers, self.node_id, self.public_key, self.listen_port)
        out += peer_differences(wanted, {k: p.config for k, p in peers.items()})
        remove, add = address_changes(
            tunnel_cidr(local_tunnel_addr) if local_tunnel_addr else None,
            await self._addresses())
        out += [f"wireguard address {c} on {self.ifname}: not wanted" for c in remove]
        out += [f"wireguard address {c} on {self.ifname}: missing" for c in add]
        mtu, up = await self._link_state()
        want_mtu = self._mtu_for(wanted, await self._underlay_mtus(wanted))
        if mtu != want_mtu:
            out.append(f"wireguard {self.ifname} mtu {mtu}; want {want_mtu}")
        if not up:
            out.append(f"wireguard {self.ifname}: down")
        subnet = tunnel_subnet(local_tunnel_addr) if local_tunnel_addr else None
        if subnet and subnet not in await self._blackholes():
            out.append(f"wireguard blackhole route {subnet}: missing")
        return out

    async def peer_checks(self, message: cluster_pb2.AssignmentsMessage) -> list[pb.PeerCheck]:
        """NetworkReport.peers: one per wanted peer, with its node id, endpoint and last
        handshake (0 and no endpoint when the interface lacks it)."""
        status = {key: (endpoint, ns) for key, endpoint, ns in await self.peer_status()}
        wanted = desired_peers(message.peers, self.node_id, self.public_key, self.listen_port)
        checks: list[pb.PeerCheck] = []
        for peer in message.peers:
            if peer.public_key not in wanted:
                continue
            endpoint, handshake = status.get(peer.public_key, ("", 0))
            checks.append(pb.PeerCheck(node_id=peer.node_id, public_key=peer.public_key,
                                       endpoint=endpoint, last_handshake_ns=handshake))
        return checks

    async def close(self, keep_blackhole: bool = False) -> None:
        """Stop wireguard-go and remove the interface (and the blackhole route unless
        `keep_blackhole`: keep it while VXLAN devices aimed at tunnel addresses remain)."""
        async with self._lock:
            await self._stop()
            await self._delete_link()
            _remove_stale_socket(self.socket_path)  # left behind by a wireguard-go killed hard
            if not keep_blackhole:
                await self._set_blackhole(None)

    # convergence

    def _rotate_keys(self) -> None:
        self._pair = new_key_pair(time.time_ns())
        self._keys.save(self._pair)

    async def _converge(self, message: cluster_pb2.AssignmentsMessage,
                        local_tunnel_addr: str) -> None:
        # The blackhole first: from here on, nothing for a tunnel address leaves in clear.
        await self._set_blackhole(tunnel_subnet(local_tunnel_addr) if local_tunnel_addr
                                  else None)
        await self._ensure_device()
        iface, peers = parse_dump(await self.runner.run("wg", "show", self.ifname, "dump"))
        await self._apply_wg(interface_changes(self._pair.private_key, self.listen_port, iface))
        wanted = desired_peers(message.peers, self.node_id, self.public_key, self.listen_port)
        await self._apply_wg(peer_changes(wanted, {k: p.config for k, p in peers.items()}))
        await self._converge_addresses(tunnel_cidr(local_tunnel_addr) if local_tunnel_addr
                                       else None)
        await self._converge_link(wanted)

    async def _apply_wg(self, args: list[str]) -> None:
        if not args:
            return
        if "@key" in args:
            args = [str(self._keys.key_path) if a == "@key" else a for a in args]
        try:
            await self.runner.run("wg", "set", self.ifname, *args)
        except subprocess.CalledProcessError as err:
            raise TunnelDown(f"wg set {' '.join(a for a in args if a != str(self._keys.key_path))}"
                             f": {why(err).split(': ', 1)[-1]}") from err

    async def _addresses(self) -> list[str]:
        links = await self.runner.json("-4", "addr", "show", "dev", self.ifname)
        return [f"{a['local']}/{a['prefixlen']}" for link in links
                for a in _dicts(link.get("addr_info"))]

    async def _link_state(self) -> tuple[int, bool]:
        links = await self.runner.json("link", "show", "dev", self.ifname)
        link = links[0] if links else {}
        mtu = link.get("mtu")
        return (mtu if isinstance(mtu, int) else 0), "UP" in _strs(link.get("flags"))

    async def _blackholes(self) -> set[str]:
        routes = await self.runner.json("route", "show", "type", "blackhole")
        return {str(r["dst"]) for r in routes if r.get("metric") == BLACKHOLE_METRIC}

    async def _converge_addresses(self, want: str | None) -> None:
        remove, add = address_changes(want, await self._addresses())
        for cidr in remove:
            await self.runner.run("ip", "addr", "del", cidr, "dev", self.ifname)
        for cidr in add:
            await self.runner.run("ip", "addr", "add", cidr, "dev", self.ifname)

    async def _converge_link(self, wanted: Mapping[str, PeerConfig]) -> None:
        mtu = self._mtu_for(wanted, await self._underlay_mtus(wanted))
        actual_mtu, up = await self._link_state()
        if actual_mtu != mtu or not up:
            await self.runner.run("ip", "link", "set", "dev", self.ifname, "mtu", str(mtu), "up")
        if not self._steered:
            self._steered = True  # once per device: a failure is said once, not every pass
            if not self._kernel:  # the kernel module decrypts on every CPU already
                await self._spread_receive()
        self.mtu = mtu

    async def _spread_receive(self) -> None:
        try:
            await spread_receive(self.runner.run, self.ifname)
        except subprocess.CalledProcessError as err:
            log.warning("wireguard %s: receive steering not set (%s); the tunnel works, "
                        "with all its receive work on wireguard-go's CPU", self.ifname, why(err))

    @staticmethod
    def _mtu_for(wanted: Mapping[str, PeerConfig], mtus: Sequence[int]) -> int:
        return wg_mtu(underlay_mtu(mtus), [c.endpoint for c in wanted.values() if c.endpoint])

    async def _underlay_mtus(self, wanted: Mapping[str, PeerConfig]) -> list[int]:
        devices: set[str] = set()
        for config in wanted.values():
            host = _host(config.endpoint)
            try:
                routes = await self.runner.json("route", "get", host)
            except subprocess.CalledProcessError:
                continue  # no route to this peer (yet): it says nothing of the MTU
            devices |= {str(r["dev"]) for r in routes if "dev" in r}
        mtus: list[int] = []
        for dev in sorted(devices - {self.ifname}):
            for link in await self.runner.json("link", "show", "dev", dev):
                if isinstance(link.get("mtu"), int):
                    mtus.append(int(str(link["mtu"])))
        return mtus

    async def _set_blackhole(self, subnet: str | None) -> None:
        ours = await self._blackholes()
        for dst in sorted(ours - {subnet} if subnet else ours):
            await self.runner.run("ip", "route", "del", "blackhole", dst,
                                  "metric", str(BLACKHOLE_METRIC))
        if subnet and subnet not in ours:
            await self.runner.run("ip", "route", "add", "blackhole", subnet,
                                  "metric", str(BLACKHOLE_METRIC))

    # the device

    async def _ensure_device(self) -> None:
        if await self._device_alive():
            return
        if self._proc is not None and self._proc.returncode is not None and not self._error:
            self._error = f"wireguard-go exited (code {self._proc.returncode})"
        await self._stop()
        await self._delete_link()
        self._steered = False
        if self._kernel is None:
            self._kernel = await self._try_kernel()
            if self._kernel:
                return
        if self._kernel:
            await self.runner.run("ip", "link", "add", self.ifname, "type", "wireguard")
            return
        await self._start_userspace()

    async def _device_alive(self) -> bool:
        if self._proc is not None and self._proc.returncode is not None:
            return False
        try:
            await self.runner.run("wg", "show", self.ifname, "dump")
        except (subprocess.CalledProcessError, OSError):
            return False
        return True

    async def _try_kernel(self) -> bool:
        try:
            await self.runner.run("ip", "link", "add", self.ifname, "type", "wireguard")
        except subprocess.CalledProcessError:
            return False  # "Unknown device type": no module, wireguard-go it is
        return True

    async def _start_userspace(self) -> None:
        binary = shutil.which("wireguard-go")
        if binary is None:
            raise TunnelDown("no WireGuard: the kernel has no wireguard module and "
                             "wireguard-go is not installed")
        if shutil.which("wg") is None:
            raise TunnelDown("wg (wireguard-tools) is not installed")
        _remove_stale_socket(self.socket_path)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = self._dir / "wireguard-go.log"
        with open(log_path, "ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                *self.runner.command(binary, "-f", self.ifname),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
                start_new_session=True)  # a ^C to shoald's terminal is shoald's to handle
        self._stopping = False
        self._watch = asyncio.create_task(self._watch_process(self._proc, log_path))
        await self._wait_started(self._proc, log_path)

    async def _wait_started(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise TunnelDown(_exit_reason(proc.returncode, log_path))
            if os.path.exists(self.socket_path) and await self._device_alive():
                return
            await asyncio.sleep(0.05)
        raise TunnelDown(f"wireguard-go did not open {self.socket_path} in "
                         f"{START_TIMEOUT_S:.0f} s")

    async def _watch_process(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        code = await proc.wait()
        if not self._stopping and proc is self._proc:
            # Said at once (heartbeats carry it); the next sync restarts it.
            self._error = _exit_reason(code, log_path)

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        self._stopping = True
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._watch is not None:
            await self._watch
            self._watch = None

    async def _delete_link(self) -> None:
        if await self._link_exists():
            await self.runner.run("ip", "link", "del", "dev", self.ifname)

    async def _link_exists(self) -> bool:
        try:
            await self.runner.run("ip", "link", "show", "dev", self.ifname)
        except subprocess.CalledProcessError:
            return False
        return True


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a dead wireguard-go would make the new one refuse to start; a
    live one (an earlier shoald's wireguard-go still running) is left alone."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    finally:
        probe.close()


def _exit_reason(code: int, log_path: Path) -> str:
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return f"wireguard-go exited ({how})" + (f": {lines[-1].strip()}" if lines else "")


def _dicts(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strs(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
