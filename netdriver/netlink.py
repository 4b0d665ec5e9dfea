"""The only user of pyroute2: small blocking functions over netlink.

Every function takes the namespace it acts in: a name under /run/netns, a path such as
/proc/PID/ns/net, or None for this process's own namespace. A socket keeps the namespace it
was made in, so for another namespace the netlink socket is opened on a short-lived thread
that entered it (netdriver.node.netns) and the whole call runs there. Callers in asyncio
wrap these in asyncio.to_thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[attr-defined]
from pyroute2.ethtool.ioctl import (  # type: ignore[import-untyped]
    ETHTOOL_GGRO,
    ETHTOOL_SGRO,
    EthtoolValue,
    IoctlEthtool,
)
from pyroute2.netlink.rtnl import ndmsg

from netdriver.node import netns
from netdriver.node.netns import run_in_netns_sync

T = TypeVar("T")
Ns = str | None
NUD_PERMANENT = ndmsg.states["permanent"]
NUD_NOARP = ndmsg.states["noarp"]  # a bridge FDB entry added as "static"
NTF_SELF = ndmsg.flags["self"]
NTF_MASTER = ndmsg.flags["master"]


class LinkMissing(LookupError):
    """The named link is not in the namespace."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str              # "bridge", "vxlan", "veth", "" (lo, plain devices)
    mtu: int
    up: bool
    master: int            # index of the bridge it is enslaved to, 0 if none
    mac: str
    peer_index: int = 0    # veth: the peer's index (in the peer's namespace)
    vni: int = 0           # vxlan only
    local: str = ""
    port: int = 0
    learning: bool = False
    proxy: bool = False


@dataclass(frozen=True, order=True)
class Fdb:
    mac: str
    dst: str


@dataclass(frozen=True, order=True)
class Neighbour:
    ip: str
    mac: str


@dataclass(frozen=True)
class Snapshot:
    """Everything the data plane checks in one namespace, read in one pass."""
    links: tuple[Link, ...]
    addresses: dict[str, tuple[str, ...]]   # ifname -> IPv4 CIDRs
    fdb: dict[str, tuple[Fdb, ...]]         # vxlan ifname -> remote entries (with a dst)
    bridge_fdb: dict[str, tuple[str, ...]]  # port ifname -> MACs of the bridge's static entries
    gro: dict[str, bool]                    # ifname -> generic receive offload on
    neighbours: dict[str, tuple[Neighbour, ...]]  # ifname -> permanent IPv4 entries

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)


def _in(ns: Ns, fn: Callable[[], T]) -> T:
    """`fn()` inside the namespace (None: this thread's own)."""
    return fn() if ns is None else run_in_netns_sync(netns.netns_path(ns), fn)


def _run(ns: Ns, fn: Callable[[Any], T]) -> T:
    def body() -> T:
        with IPRoute() as ipr:
            return fn(ipr)
    return _in(ns, body)


# -- namespaces --

def create_netns(name: str) -> None:
    """A named namespace with lo up; nothing if it exists. Made by `ip netns add`: pyroute2
    forks a Python child for it, which aborts in a process that runs gRPC (shoald)."""
    if name not in netns.list_netns():
        netns.add_netns(name)
    set_link(name, "lo", up=True)


# -- links --

def _link_of(msg: Any) -> Link:
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")

    def vx(attr: str) -> Any:
        return data.get(attr) if data is not None and kind == "vxlan" else None
    return Link(index=msg["index"], name=msg.get("IFLA_IFNAME"), kind=kind,
                mtu=msg.get("IFLA_MTU"), up=bool(msg["flags"] & 1),
                master=msg.get("IFLA_MASTER") or 0, mac=msg.get("IFLA_ADDRESS") or "",
                peer_index=msg.get("IFLA_LINK") or 0 if kind == "veth" else 0,
                vni=vx("IFLA_VXLAN_ID") or 0, local=vx("IFLA_VXLAN_LOCAL") or "",
                port=vx("IFLA_VXLAN_PORT") or 0, learning=bool(vx("IFLA_VXLAN_LEARNING")),
                proxy=bool(vx("IFLA_VXLAN_PROXY")))


def links(ns: Ns) -> list[Link]:
    return _run(ns, lambda ipr: [_link_of(m) for m in ipr.get_links()])


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkMissing(name)
    return int(found[0])


def add_bridge(ns: Ns, name: str, mtu: int) -> None:
    _run(ns, lambda ipr: ipr.link("add", ifname=name, kind="bridge", mtu=mtu))


def add_vxlan(ns: Ns, name: str, vni: int, local: str, port: int, mtu: int) -> None:
    """Learning off (entries come from the store); proxy on, so the device answers ARP
    for remote tasks from its neighbour table."""
    _run(ns, lambda ipr: ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni,
                                  vxlan_local=local, vxlan_port=port, vxlan_learning=0,
                                  vxlan_proxy=1, mtu=mtu))


def add_veth(ns: Ns, name: str, peer: str) -> None:
    _run(ns, lambda ipr: ipr.link("add", ifname=name, kind="veth", peer=peer))


def delete_link(ns: Ns, name: str) -> None:
    """Nothing if it is already gone."""
    def body(ipr: Any) -> None:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])
    _run(ns, body)


def set_link(ns: Ns, name: str, *, mtu: int | None = None, up: bool | None = None,
             master: str | None = None, mac: str | None = None,
             new_name: str | None = None) -> None:
    """Change what is given; a rename or MAC change happens while the link is down."""
    def body(ipr: Any) -> None:
        index = _index(ipr, name)
        if new_name is not None or mac is not None:
            ipr.link("set", index=index, state="down")
            attrs: dict[str, Any] = {}
            if new_name is not None:
                attrs["ifname"] = new_name
            if mac is not None:
                attrs["address"] = mac
            ipr.link("set", index=index, **attrs)
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        if master is not None:
            ipr.link("set", index=index, master=_index(ipr, master))
        if up is not None:
            ipr.link("set", index=index, state="up" if up else "down")
    _run(ns, body)


def set_port_learning(ns: Ns, name: str, on: bool) -> None:
    """The bridge's MAC learning on its port `name` (the device must be enslaved)."""
    _run(ns, lambda ipr: ipr.brport("set", index=_index(ipr, name), learning=int(on)))


def _ethtool(name: str, cmd: int, data: int = 0) -> int:
    """One ethtool get/set ioctl on a device of this thread's namespace."""
    eth = IoctlEthtool(name)
    try:
        value = EthtoolValue(cmd=cmd, data=data)
        eth.ifreq.value = ctypes.pointer(value)
        eth.ioctl()
        return int(value.data)
    finally:
        eth.close()


def gro(ns: Ns, name: str) -> bool:
    """Whether the device does generic receive offload."""
    return _in(ns, lambda: bool(_ethtool(name, ETHTOOL_GGRO)))


def set_gro(ns: Ns, name: str, on: bool) -> None:
    _in(ns, lambda: _ethtool(name, ETHTOOL_SGRO, int(on)))


def move_link(ns: Ns, name: str, target: str) -> None:
    """Into the namespace `target` (name or path); a vxlan device keeps its socket in the
    namespace it was created in."""
    fd = os.open(netns.netns_path(target), os.O_RDONLY)
    try:
        _run(ns, lambda ipr: ipr.link("set", index=_index(ipr, name), net_ns_fd=fd))
    finally:
        os.close(fd)


# -- addresses --

def _addresses(ipr: Any) -> dict[str, tuple[str, ...]]:
    names = {m["index"]: m.get("IFLA_IFNAME") for m in ipr.get_links()}
    found: dict[str, list[str]] = {}
    for msg in ipr.get_addr(family=socket.AF_INET):
        name = names.get(msg["index"], "")
        found.setdefault(name, []).append(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
    return {name: tuple(sorted(cidrs)) for name, cidrs in found.items()}


def addresses(ns: Ns) -> dict[str, tuple[str, ...]]:
    return _run(ns, _addresses)


def add_address(ns: Ns, ifname: str, cidr: str) -> None:
    ip, plen = cidr.split("/")
    _run(ns, lambda ipr: ipr.addr("add", index=_index(ipr, ifname), address=ip,
                                  prefixlen=int(plen)))


def delete_address(ns: Ns, ifname: str, cidr: str) -> None:
    ip, plen = cidr.split("/")
    _run(ns, lambda ipr: ipr.addr("del", index=_index(ipr, ifname), address=ip,
                                  prefixlen=int(plen)))


def mtu_of_address(ns: Ns, ip: str) -> int:
    """The MTU of the link holding `ip` (the underlay's, for the overlay's MTU)."""
    def body(ipr: Any) -> int:
        for msg in ipr.get_addr(family=socket.AF_INET):
            if msg.get("IFA_ADDRESS") == ip:
                return int(ipr.get_links(msg["index"])[0].get("IFLA_MTU"))
        raise LookupError(f"no interface holds {ip}")
    return _run(ns, body)


# -- routes --

def routes(ns: Ns) -> list[tuple[str, str]]:
    """IPv4 main-table routes as (destination CIDR or "default", gateway or "")."""
    def body(ipr: Any) -> list[tuple[str, str]]:
        out = []
        for msg in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = msg.get("RTA_DST")
            out.append((f"{dst}/{msg['dst_len']}" if dst else "default",
                        msg.get("RTA_GATEWAY") or ""))
        return out
    return _run(ns, body)


# -- FDB and neighbours --

def _port_entries(ipr: Any, index: int) -> list[Any]:
    """The AF_BRIDGE entries of one device: its own (VXLAN's) and its bridge's for it."""
    return [m for m in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=index)
            if m["ifindex"] == index]


def _fdb(entries: list[Any]) -> tuple[Fdb, ...]:
    # Only entries with a remote dst: the kernel's own entries for local ports have none.
    return tuple(sorted(Fdb(m.get("NDA_LLADDR"), m.get("NDA_DST")) for m in entries
                        if m.get("NDA_DST")))


def _bridge_fdb(entries: list[Any]) -> tuple[str, ...]:
    # The bridge's static entries on the port: not its own address (permanent), nor the
    # VXLAN device's own entries (no NDA_MASTER).
    return tuple(sorted(m.get("NDA_LLADDR") for m in entries
                        if m.get("NDA_MASTER") and m["state"] == NUD_NOARP
                        and not m.get("NDA_DST")))


def _neighbours(ipr: Any, index: int) -> tuple[Neighbour, ...]:
    entries = ipr.get_neighbours(family=socket.AF_INET, ifindex=index)
    return tuple(sorted(Neighbour(m.get("NDA_DST"), m.get("NDA_LLADDR")) for m in entries
                        if m["ifindex"] == index and m["state"] & NUD_PERMANENT))


def fdb(ns: Ns, ifname: str) -> tuple[Fdb, ...]:
    return _run(ns, lambda ipr: _fdb(_port_entries(ipr, _index(ipr, ifname))))


def add_fdb(ns: Ns, ifname: str, entry: Fdb) -> None:
    _run(ns, lambda ipr: ipr.fdb("append", ifindex=_index(ipr, ifname), lladdr=entry.mac,
                                 dst=entry.dst, state=NUD_PERMANENT, flags=NTF_SELF))


def delete_fdb(ns: Ns, ifname: str, entry: Fdb) -> None:
    _run(ns, lambda ipr: ipr.fdb("del", ifindex=_index(ipr, ifname), lladdr=entry.mac,
                                 dst=entry.dst, flags=NTF_SELF))


def bridge_fdb(ns: Ns, ifname: str) -> tuple[str, ...]:
    """MACs the bridge sends to its port `ifname` by a static entry."""
    return _run(ns, lambda ipr: _bridge_fdb(_port_entries(ipr, _index(ipr, ifname))))


def add_bridge_fdb(ns: Ns, ifname: str, mac: str) -> None:
    # "replace" so an entry the bridge learnt on another port becomes ours.
    _run(ns, lambda ipr: ipr.fdb("replace", ifindex=_index(ipr, ifname), lladdr=mac,
                                 state=NUD_NOARP, flags=NTF_MASTER))


def delete_bridge_fdb(ns: Ns, ifname: str, mac: str) -> None:
    _run(ns, lambda ipr: ipr.fdb("del", ifindex=_index(ipr, ifname), lladdr=mac,
                                 flags=NTF_MASTER))


def neighbours(ns: Ns, ifname: str) -> tuple[Neighbour, ...]:
    return _run(ns, lambda ipr: _neighbours(ipr, _index(ipr, ifname)))


def add_neighbour(ns: Ns, ifname: str, entry: Neighbour) -> None:
    # "replace" so an entry the kernel learnt (or one with an old MAC) becomes ours.
    _run(ns, lambda ipr: ipr.neigh("replace", ifindex=_index(ipr, ifname), dst=entry.ip,
                                   lladdr=entry.mac, state=NUD_PERMANENT))


def delete_neighbour(ns: Ns, ifname: str, entry: Neighbour) -> None:
    _run(ns, lambda ipr: ipr.neigh("del", ifindex=_index(ipr, ifname), dst=entry.ip,
                                   lladdr=entry.mac))


# -- one read of everything --

def snapshot(ns: Ns, fdb_of: Iterable[str] = ()) -> Snapshot:
    """Links, addresses, and the FDB and neighbour tables and GRO setting of the links named
    in `fdb_of` (those that exist)."""
    wanted = set(fdb_of)

    def body(ipr: Any) -> Snapshot:
        found = tuple(_link_of(m) for m in ipr.get_links())
        tables = [link for link in found if link.name in wanted]
        entries = {link.name: _port_entries(ipr, link.index) for link in tables}
        return Snapshot(links=found, addresses=_addresses(ipr),
                        fdb={name: _fdb(rows) for name, rows in entries.items()},
                        bridge_fdb={name: _bridge_fdb(rows) for name, rows in entries.items()},
                        gro={link.name: bool(_ethtool(link.name, ETHTOOL_GGRO))
                             for link in tables},
                        neighbours={link.name: _neighbours(ipr, link.index) for link in tables})
    return _run(ns, body)
