"""The node's WireGuard interface: encrypted overlays send their VXLAN through it.

One interface per node (`shw` + the node id's start) in the node's host namespace, with the
node's tunnel address (/16 of the tunnel pool) and one peer per other node (endpoint = the
peer's underlay address and the cluster's listen port, allowed-ips = its tunnel address/32).
The kernel module is used when `ip link add X type wireguard` works, `wireguard-go` otherwise;
making sure the device exists, and that process, are wgdevice.py's.

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
import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from netdriver.node.steering import spread_receive
from netdriver.node.wgdevice import Runner, TunnelDown, TunnelStatus, WireGuardDevice
from netdriver.node.wgkeys import KeyStore, new_key_pair, rotation_due
from netdriver.node.wgstate import (
    PeerConfig,
    address_changes,
    desired_peers,
    endpoint_host,
    interface_changes,
    interface_name,
    parse_dump,
    peer_changes,
    peer_differences,
    tunnel_cidr,
    tunnel_subnet,
    underlay_mtu,
    wg_mtu,
)
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_LISTEN_PORT = 51820
BLACKHOLE_METRIC = 4242  # above the connected route's 0: only used when the interface is gone


def why(err: BaseException) -> str:
    """A one-line reason for an error (a command's stderr when it has one)."""
    if isinstance(err, subprocess.CalledProcessError):
        text = (err.stderr or err.stdout or "").strip().splitlines()
        cmd = " ".join(str(a) for a in err.cmd[:3])
        return f"{cmd}: {text[-1] if text else f'exit code {err.returncode}'}"
    return str(err) or type(err).__name__


# --- the interface ----------------------------------------------------------------------

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
        self._status = TunnelStatus()
        self._device = WireGuardDevice(self.runner, self.ifname, self._dir, self._status)
        self._lock = asyncio.Lock()
        self.mtu = 0  # the interface's MTU after the last sync (0: not set yet)

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
        return self._status.error

    @property
    def pid(self) -> int | None:
        """wireguard-go's process id (None with the kernel module or when not running)."""
        return self._device.pid

    @property
    def socket_path(self) -> str:
        return self._device.socket_path

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
                self._status.error = str(err)
            except (subprocess.CalledProcessError, OSError, ValueError) as err:
                self._status.error = why(err)
            else:
                self._status.error = ""

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
            reason = f" ({self._status.error})" if self._status.error else ""
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
            await self._device.remove()
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
        await self._device.ensure()
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
        device = self._device
        if not device.steered:
            device.steered = True  # once per device: a failure is said once, not every pass
            if not device.kernel_module:  # the kernel module decrypts on every CPU already
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
            host = endpoint_host(config.endpoint)
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


def _dicts(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strs(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
