"""The routing mesh of one node: published ports answer on every address of the host.

Layout (Docker's ingress-sbox, with nftables for IPVS):

    client → host:P ──DNAT──▶ 169.254.77.2:P (veth shi0 ⇄ shi1) ──▶ ingress namespace
           ──DNAT (numgen)──▶ task:T over the ingress overlay, masqueraded as this node

- In the host namespace, `table ip shoal_mesh` DNATs tcp/udp to any local address on a
  published port to the ingress namespace's end of the veth (and masquerades what goes
  into the veth, so the ingress namespace can answer without knowing the client's route).
  Ports published in mode `host` go to the local task instead: through the ingress
  namespace when the task is on the ingress network, else straight from the host.
- In the ingress namespace (attached to the `ingress` overlay network by the overlay part),
  `table ip shoal_mesh` spreads each published port over the service's tasks and
  masquerades what leaves towards them, so replies come back through this node.

Each table is replaced whole and atomically (see nft.replace_table) and only when its text
changed. With no task behind a port nothing is DNATed in the ingress namespace, so a
connection gets a reset there (nothing listens) rather than hanging.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from netdriver.ipam import bare
from netdriver.node import nft
from netdriver.node.netns import named_netns_path, nsenter
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

TABLE = "shoal_mesh"
HOST_LINK = "169.254.77.1"
INGRESS_LINK = "169.254.77.2"
LINK_PREFIX = 30
INGRESS_MODE = pb.PortConfig.PublishMode.INGRESS
HOST_MODE = pb.PortConfig.PublishMode.HOST
PROTOCOLS = {pb.PortConfig.Protocol.TCP: "tcp", pb.PortConfig.Protocol.UDP: "udp",
             pb.PortConfig.Protocol.SCTP: "sctp"}


@dataclass(frozen=True, order=True)
class Published:
    """One published port and where its connections go."""
    protocol: str  # "tcp" | "udp" | "sctp"
    published: int
    target: int
    backends: tuple[str, ...]  # addresses, sorted
    via_ingress: bool = False  # mode host, to the task's address on the ingress network


def ingress_state(networks: Sequence[cluster_pb2.NetworkState]
                  ) -> cluster_pb2.NetworkState | None:
    return next((n for n in networks if n.network.spec.ingress), None)


def ingress_ports(networks: Sequence[cluster_pb2.NetworkState]) -> list[Published]:
    """Every port published in mode ingress, with the service's task addresses on the
    ingress network as backends."""
    state = ingress_state(networks)
    if state is None:
        return []
    out: dict[tuple[str, int], Published] = {}
    for record in state.services:
        backends = tuple(nft.backends(record))
        for port in record.ports:
            if port.publish_mode != INGRESS_MODE or not port.published_port:
                continue
            proto = PROTOCOLS.get(port.protocol, "tcp")
            # The manager refuses duplicates; if one slips through, the first one wins so
            # the text stays deterministic.
            out.setdefault((proto, port.published_port),
                           Published(proto, port.published_port, port.target_port, backends))
    return sorted(out.values())


def host_ports(local_tasks: Sequence[pb.Task], ingress_id: str = "") -> list[Published]:
    """Ports published in mode host by the tasks running here, each to its task.

    A task attached to the ingress network is reached through the ingress namespace, which
    is on that network (no route from the host needed). Any other task is DNATed to from
    the host directly, at its first address: the host must have a route to it."""
    out: dict[tuple[str, int], Published] = {}
    for task in sorted(local_tasks, key=lambda t: t.id):
        on_ingress = [a for att in task.networks if ingress_id and att.network_id == ingress_id
                      for a in att.addresses]
        addrs = on_ingress or [a for att in task.networks for a in att.addresses]
        if not addrs:
            continue
        for port in task.endpoint.ports:
            if port.publish_mode != HOST_MODE or not port.published_port:
                continue
            proto = PROTOCOLS.get(port.protocol, "tcp")
            out.setdefault((proto, port.published_port),
                           Published(proto, port.published_port, port.target_port,
                                     (bare(addrs[0]),), bool(on_ingress)))
    return sorted(out.values())


def host_ruleset(ingress: Sequence[Published], host: Sequence[Published],
                 host_veth: str = "shi0") -> str:
    """The host namespace's table: local address + published port → the ingress
    namespace (same port), or → the local task for mode host."""
    through = [*ingress, *(p for p in host if p.via_ingress)]
    direct = [p for p in host if not p.via_ingress]
    dnat = [f"fib daddr type local {p.protocol} dport {p.published} "
            f"dnat to {INGRESS_LINK}" for p in through]
    dnat += [f"fib daddr type local {p.protocol} dport {p.published} "
             f"{nft.pick(list(p.backends), p.target)}" for p in direct]
    host_backends = sorted({a for p in direct for a in p.backends}, key=nft.sort_key)
    snat = [f'oifname "{host_veth}" masquerade']
    if host_backends:
        snat.append(f"ct status dnat ip daddr {{ {', '.join(host_backends)} }} masquerade")
    return nft.replace_table(TABLE, [
        nft.chain("prerouting", "prerouting", dnat),
        nft.chain("output", "output", dnat),
        nft.chain("postrouting", "postrouting", snat, priority=100),
    ])


def ingress_ruleset(ingress: Sequence[Published], ingress_veth: str = "shi1",
                    host: Sequence[Published] = ()) -> str:
    """The ingress namespace's table: what comes in through the veth on a published port
    → one of the service's tasks (or, for a mode-host port of a local task on the ingress
    network, → that task); masquerade what leaves towards them."""
    dnat = [f'iifname "{ingress_veth}" {p.protocol} dport {p.published} '
            f"{nft.pick(list(p.backends), p.target)}"
            for p in [*ingress, *(h for h in host if h.via_ingress)] if p.backends]
    snat = [f'ct status dnat oifname != "{ingress_veth}" masquerade']
    return nft.replace_table(TABLE, [
        nft.chain("prerouting", "prerouting", dnat),
        nft.chain("postrouting", "postrouting", snat, priority=100),
    ])


class Mesh:
    """Keeps this node's routing mesh as the assignments say.

    `ingress_netns` is the name of the ingress namespace (`<prefix>ingress`, under
    /run/netns); made here when missing, and attached to the ingress network by the overlay
    part. `host_netns` is the host namespace's path (None: this process's own)."""

    def __init__(self, ingress_netns: str, host_netns: str | None = None,
                 host_veth: str = "shi0", ingress_veth: str = "shi1") -> None:
        self.ingress_name = ingress_netns
        self.ingress_path = named_netns_path(ingress_netns)
        self.host_path = host_netns or f"/proc/{os.getpid()}/ns/net"
        self.host_veth = host_veth
        self.ingress_veth = ingress_veth
        self.applies = 0
        self._applied: dict[str, str] = {}  # namespace path → text last applied there
        self._lock = asyncio.Lock()  # one sync at a time: each reads then writes the kernel

    async def sync(self, message: cluster_pb2.AssignmentsMessage,
                   local_tasks: Sequence[pb.Task]) -> None:
        """Converge: plumbing first (namespace, veth, sysctls), then both tables."""
        ingress = ingress_ports(message.networks)
        state = ingress_state(message.networks)
        host = host_ports(local_tasks, state.network.id if state else "")
        async with self._lock:
            await self._prepare()
            await self._apply(self.ingress_path,
                              ingress_ruleset(ingress, self.ingress_veth, host))
            await self._apply(self.host_path, host_ruleset(ingress, host, self.host_veth))

    async def prepare(self) -> bool:
        """Make the ingress namespace and the veth pair where missing. True when the
        namespace was made just now: it must then be attached to the ingress network
        (again). `sync` calls this itself."""
        async with self._lock:
            return await self._prepare()

    async def _prepare(self) -> bool:
        made = not os.path.exists(self.ingress_path)
        if made or not await self._plumbed():
            await self._plumb()
            self._applied.clear()  # a remade namespace or veth: write both tables again
        return made

    async def differences(self) -> list[str]:
        """What the kernel lacks of the last applied state; anything found is rewritten on
        the next sync."""
        async with self._lock:
            return await self._differences()

    async def _differences(self) -> list[str]:
        found = await self._plumbing_problems()
        for path, text in list(self._applied.items()):
            try:
                listing = await nft.read_ruleset(path, TABLE)
            except subprocess.CalledProcessError as err:
                listing = ""
                log.warning("cannot read table in %s: %s", path, err.stderr)
            if not listing or _dnat_lines(listing) != _dnat_lines(text):
                found.append(f"table ip {TABLE} in {path}: missing or different")
                del self._applied[path]
        return found

    async def close(self) -> None:
        """Remove the host table, the veth pair and the ingress namespace."""
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        for step in (lambda: nft.delete_table(self.host_path, TABLE),
                     lambda: nsenter(self.host_path, "ip", "link", "del", self.host_veth)):
            try:
                await step()
            except subprocess.CalledProcessError as err:
                log.debug("mesh close: %s", err.stderr)
        if os.path.exists(self.ingress_path):
            await _run("ip", "netns", "del", self.ingress_name)
        self._applied.clear()

    async def _apply(self, path: str, text: str) -> None:
        if self._applied.get(path) == text:
            return
        self._applied.pop(path, None)
        await nft.apply_ruleset(path, text)
        self._applied[path] = text
        self.applies += 1

    async def _plumbed(self) -> bool:
        return not await self._plumbing_problems()

    async def _plumbing_problems(self) -> list[str]:
        """What is wrong with the namespace, the veth pair and the sysctls ([]: nothing)."""
        if not os.path.exists(self.ingress_path):
            return [f"namespace {self.ingress_name} missing"]
        checks = ((self.host_path, self.host_veth, HOST_LINK,
                   ["net.ipv4.ip_forward", f"net.ipv4.conf.{self.host_veth}.route_localnet"]),
                  (self.ingress_path, self.ingress_veth, INGRESS_LINK,
                   ["net.ipv4.ip_forward"]))
        problems: list[str] = []
        for path, dev, addr, sysctls in checks:
            try:
                shown = await nsenter(path, "ip", "-o", "-4", "addr", "show", "dev", dev, "up")
                values = (await nsenter(path, "sysctl", "-n", *sysctls)).split()
            except subprocess.CalledProcessError:
                problems.append(f"veth {dev} in {path}: missing")
                continue
            if f"inet {addr}/{LINK_PREFIX}" not in shown:
                problems.append(f"veth {dev} in {path}: down or without {addr}/{LINK_PREFIX}")
            problems += [f"sysctl {name} in {path}: {value}, not 1"
                         for name, value in zip(sysctls, values, strict=False)
                         if value != "1"]
        return problems

    async def _plumb(self) -> None:
        if not os.path.exists(self.ingress_path):
            await _run("ip", "netns", "add", self.ingress_name)
        ing, host = self.ingress_path, self.host_path
        # Start clean: a half-made pair (one end missing its address) is simply redone.
        for path, dev in ((ing, self.ingress_veth), (host, self.host_veth)):
            try:
                await nsenter(path, "ip", "link", "del", dev)
            except subprocess.CalledProcessError:
                pass
        # Made inside the ingress namespace, then one end moved out: the names never
        # collide with anything else in the host namespace while half made.
        await nsenter(ing, "ip", "link", "add", self.ingress_veth, "type", "veth",
                      "peer", "name", self.host_veth)
        await nsenter(ing, "ip", "link", "set", self.host_veth, "netns", host)
        await nsenter(ing, "ip", "addr", "add", f"{INGRESS_LINK}/{LINK_PREFIX}", "dev",
                      self.ingress_veth)
        await nsenter(host, "ip", "addr", "add", f"{HOST_LINK}/{LINK_PREFIX}", "dev",
                      self.host_veth)
        for path, dev in ((ing, "lo"), (ing, self.ingress_veth), (host, self.host_veth)):
            await nsenter(path, "ip", "link", "set", dev, "up")
        # Forwarding: host → veth for DNATed traffic from outside, ingress → overlay.
        # route_localnet lets the host's own 127.0.0.1:P go out of the veth (masqueraded).
        await nsenter(host, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                      f"net.ipv4.conf.{self.host_veth}.route_localnet=1")
        await nsenter(ing, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def _dnat_lines(text: str) -> list[str]:
    """The rules that decide where traffic goes, comparable between our text and `nft
    list` (which prints some things differently: only the dnat targets are kept)."""
    return sorted(line.split("dnat to", 1)[1].replace(" ", "")
                  for line in text.splitlines() if "dnat to" in line)


async def _run(*argv: str) -> None:
    await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)
