"""The pure half of the node's WireGuard interface: the peers it should have (from the
manager's message), `wg show IF dump` parsed, and the `wg set` arguments or the `network
doctor` lines that tell the two apart."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from netdriver.ipam import bare, is_ipv6, wireguard_overhead
from proto import cluster_pb2

KEEPALIVE_S = 5
TUNNEL_PREFIX = 16


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
    return underlay_mtu - wireguard_overhead(any(is_ipv6(endpoint_host(e)) for e in endpoints))


def endpoint_host(endpoint: str) -> str:
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
