"""Address management for overlay networks (pure; the manager's allocator runs it).

Nothing here keeps state: what is taken is read from the store each time (networks' subnets
and VNIs, services' VIPs, live tasks' addresses, nodes' tunnel addresses), so a new leader
continues exactly where the last one stopped and an address is never handed out twice.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proto import objects_pb2 as pb

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address

DEFAULT_POOL = "10.0.0.0/8"
DEFAULT_SUBNET_SIZE = 24
VNI_FIRST = 4096  # Docker's overlay VNIs start here too
VNI_LAST = (1 << 24) - 1
TUNNEL_POOL = Net("100.127.0.0/16")  # WireGuard addresses of nodes (shared address space)
KNOWN_OPTIONS = {"encrypted"}
DRIVERS = {"overlay"}


class IPAMError(ValueError):
    """A request the user must change; the message says what and how."""


@dataclass(frozen=True)
class Route:
    """A route a node has: a subnet that overlaps it would shadow it."""
    dst: Net
    where: str  # e.g. "198.18.0.0/24 dev lab0 on node m1"


def parse_net(text: str, what: str) -> Net:
    try:
        return Net(text, strict=True)
    except ValueError as err:
        raise IPAMError(f"invalid {what} {text!r}: {err}; give a CIDR such as 10.20.0.0/24"
                        ) from None


def parse_addr(text: str, what: str) -> Addr:
    try:
        return Addr(text)
    except ValueError:
        raise IPAMError(f"invalid {what} {text!r}: give an IPv4 address such as 10.20.0.1"
                        ) from None


def check_ipam(config: pb.IPAMConfig) -> pb.IPAMConfig:
    """A user's IPAM config, checked and completed (gateway = first address when unset)."""
    subnet = parse_net(config.subnet, "subnet")
    if subnet.prefixlen > 29:
        raise IPAMError(f"subnet {subnet} is too small: an overlay needs at least a /29")
    out = pb.IPAMConfig(subnet=str(subnet))
    hosts = (subnet.network_address + 1, subnet.broadcast_address - 1)
    if config.gateway:
        gw = parse_addr(config.gateway, "gateway")
        if not hosts[0] <= gw <= hosts[1]:
            raise IPAMError(f"gateway {gw} is not a host address of subnet {subnet}")
        out.gateway = str(gw)
    else:
        out.gateway = str(hosts[0])
    if config.ip_range:
        rng = parse_net(config.ip_range, "ip-range")
        if not rng.subnet_of(subnet):
            raise IPAMError(f"ip-range {rng} is not inside subnet {subnet}")
        out.ip_range = str(rng)
    return out


def check_options(spec: pb.NetworkSpec) -> None:
    if spec.driver and spec.driver not in DRIVERS:
        raise IPAMError(f"network driver {spec.driver!r} is not supported: swarm networks "
                        "use the overlay driver (-d overlay)")
    unknown = sorted(set(spec.driver_options) - KNOWN_OPTIONS)
    if unknown:
        raise IPAMError(f"unknown overlay option {unknown[0]!r}: the overlay driver knows "
                        f"{', '.join(sorted(KNOWN_OPTIONS))}")
    if len(spec.ipam) > 1:
        raise IPAMError("an overlay network takes one IPAM config (one --subnet)")


def overlap(subnet: Net, taken: Iterable[tuple[Net, str]]) -> str | None:
    """What `subnet` overlaps among `taken` (a description), if anything."""
    for net, what in taken:
        if subnet.overlaps(net):
            return what
    return None


def next_subnet(pools: Sequence[str], size: int, taken: Sequence[tuple[Net, str]]) -> Net:
    """The first /`size` of the pools that overlaps nothing taken (networks and routes)."""
    step = 1 << (32 - size)
    for pool_text in pools or [DEFAULT_POOL]:
        pool = Net(pool_text)
        if size < pool.prefixlen:
            continue
        value, last = int(pool.network_address), int(pool.broadcast_address)
        while value + step - 1 <= last:
            candidate = Net((value, size))
            hit = next((net for net, _ in taken if candidate.overlaps(net)), None)
            if hit is None:
                return candidate
            # Jump past what it hit: walking /24s one by one under a /8 route is 65,536 steps.
            past = int(hit.broadcast_address) + 1
            value = max(value + step, (past + step - 1) // step * step)
    raise IPAMError(f"the address pools {', '.join(pools or [DEFAULT_POOL])} have no free "
                    f"/{size} left: remove unused networks or give --subnet")


def next_vni(used: set[int]) -> int:
    for vni in range(VNI_FIRST, VNI_LAST + 1):
        if vni not in used:
            return vni
    raise IPAMError("no VXLAN network identifier left")


class Held(set[Addr]):
    """Addresses in use on one network during an allocator pass. It remembers where the last
    search for a free one stopped (nothing below is free: a pass only adds addresses), so a
    pass handing out k addresses walks the range once, not k times (2,000 nodes joining
    made that walk a tenth of the leader's work). An address discarded lowers it again."""

    def __init__(self, addrs: Iterable[Addr] = ()) -> None:
        super().__init__(addrs)
        self.floor = 0

    def discard(self, addr: object) -> None:
        super().discard(addr)
        if isinstance(addr, Addr):
            self.floor = min(self.floor, int(addr))


def first_free(net: Net, used: set[Addr], within: Net | None = None,
               skip: Addr | None = None) -> Addr | None:
    """The lowest free host address of `within` (default `net`) that isn't `net`'s network or
    broadcast address, `skip` (the gateway) or in `used`."""
    span = within or net
    low = max(int(span.network_address), int(net.network_address) + 1)
    high = min(int(span.broadcast_address), int(net.broadcast_address) - 1)
    if isinstance(used, Held):
        low = max(low, used.floor)
    found = None
    for value in range(low, high + 1):
        addr = Addr(value)
        if addr not in used and addr != skip:
            found = addr
            break
    if isinstance(used, Held):
        used.floor = int(found) if found is not None else high + 1
    return found


def next_address(ipam: pb.IPAMConfig, used: set[Addr], who: str) -> str:
    """A free address of the network (CIDR form, as Docker shows it), added to `used`."""
    net = Net(ipam.subnet)
    within = Net(ipam.ip_range) if ipam.ip_range else None
    addr = first_free(net, used, within, skip=Addr(ipam.gateway) if ipam.gateway else None)
    if addr is None:
        raise IPAMError(f"no free address left in {ipam.ip_range or ipam.subnet} for {who}")
    used.add(addr)
    return f"{addr}/{net.prefixlen}"


def bare(address: str) -> str:
    """"100.127.0.5" from "100.127.0.5" or "100.127.0.5/16" (the store keeps addresses in
    CIDR form; VXLAN, WireGuard peers and nftables want them bare); "" stays ""."""
    return address.split("/", 1)[0]


@functools.lru_cache(maxsize=65536)
def host_of(cidr: str) -> Addr:
    # Cached: the allocator reads every node's and task's address on its passes.
    return ipaddress.IPv4Interface(cidr).ip


def is_encrypted(network: pb.Network) -> bool:
    return "encrypted" in network.spec.driver_options


def wireguard_overhead(underlay_ipv6: bool) -> int:
    """Bytes WireGuard adds to a packet: outer IP header (20 for IPv4, 40 for IPv6) + UDP 8 +
    WireGuard 32. wg-quick always takes the IPv6 figure (80); on an IPv4 underlay that wastes
    20 bytes of every packet, which costs throughput where each packet is costly
    (wireguard-go)."""
    return (40 if underlay_ipv6 else 20) + 8 + 32


def is_ipv6(address: str) -> bool:
    """True for an IPv6 address, bare or CIDR, with or without [brackets] ("" is not)."""
    return ":" in bare(address).strip("[]")
