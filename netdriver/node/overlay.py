"""Bring one network's namespace (and its sandboxes' legs) to the desired state.

Each step reads what the kernel has, compares with `NetworkDesired` and changes only what
differs, recording every difference as a line (`network doctor` shows them). Run on
start-up, after a restart and on every update alike: nothing is "added once and forgotten".
The functions here block (netlink); the data plane calls them through asyncio.to_thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from netdriver import netlink as nl
from netdriver.node.desired import NetworkDesired, Veth, Vxlan
from netdriver.node.netns import (
    bridge_netfilter_on,
    delete_netns,
    list_netns,
    set_bridge_netfilter_off,
)

E = TypeVar("E", bound=Any)  # an FDB or neighbour entry (ordered, hashable)

log = logging.getLogger(__name__)


def ensure_netns(name: str, diffs: list[str]) -> None:
    if name not in list_netns():
        diffs.append(f"namespace {name}: missing")
    nl.create_netns(name)  # also brings lo up
    for key in bridge_netfilter_on(name):
        diffs.append(f"{key}: 1, want 0")
        set_bridge_netfilter_off(name, key)


def sync_bridge(ns: str, desired: NetworkDesired, snap: nl.Snapshot, diffs: list[str]) -> None:
    br = desired.bridge
    link = snap.link(br.name)
    if link is None:
        diffs.append(f"{br.name}: missing")
        nl.add_bridge(ns, br.name, br.mtu)
    elif link.mtu != br.mtu:
        diffs.append(f"{br.name} mtu {link.mtu}: want {br.mtu}")
        nl.set_link(ns, br.name, mtu=br.mtu)
    sync_addresses(ns, br.name, (br.address,), snap.addresses.get(br.name, ()), diffs)
    if link is None or not link.up:
        if link is not None:
            diffs.append(f"{br.name}: down")
        nl.set_link(ns, br.name, up=True)


def sync_addresses(ns: str, ifname: str, want: tuple[str, ...], have: tuple[str, ...],
                   diffs: list[str]) -> None:
    for cidr in sorted(set(have) - set(want)):
        diffs.append(f"{ifname} address {cidr}: unexpected")
        nl.delete_address(ns, ifname, cidr)
    for cidr in sorted(set(want) - set(have)):
        diffs.append(f"{ifname} address {cidr}: missing")
        nl.add_address(ns, ifname, cidr)


def vxlan_mismatch(link: nl.Link, want: Vxlan) -> str:
    """Why the existing device cannot stay (those attributes need a new device)."""
    for what, have, wanted in (("vni", link.vni, want.vni), ("local", link.local, want.local),
                               ("dstport", link.port, want.port),
                               ("learning", link.learning, False), ("proxy", link.proxy, True)):
        if have != wanted:
            return f"{link.name} {what} {have}: want {wanted}"
    return ""


def create_vxlan(ns: str, want: Vxlan, bridge: str, host_netns: nl.Ns) -> None:
    """Made in the host namespace (its UDP socket stays on the underlay there), moved in
    under a unique temporary name, then renamed."""
    temp = "vx" + secrets.token_hex(4)
    nl.add_vxlan(host_netns, temp, want.vni, want.local, want.port, want.mtu)
    try:
        nl.move_link(host_netns, temp, ns)
    except BaseException:
        nl.delete_link(host_netns, temp)
        raise
    nl.set_link(ns, temp, new_name=want.name)
    nl.set_link(ns, want.name, master=bridge, up=True)
    nl.set_port_learning(ns, want.name, False)
    nl.set_gro(ns, want.name, want.gro)


def sync_vxlan(ns: str, desired: NetworkDesired, snap: nl.Snapshot, host_netns: nl.Ns,
               diffs: list[str]) -> None:
    want = desired.vxlan
    name = want.name if want else "vxlan0"
    link = snap.link(name)
    if want is None:
        if link is not None:
            diffs.append(f"{name}: present but must not be")
            nl.delete_link(ns, name)
        return
    why = "" if link is None else vxlan_mismatch(link, want)
    if link is None or why:
        diffs.append(why or f"{name}: missing")
        nl.delete_link(ns, name)
        create_vxlan(ns, want, desired.bridge.name, host_netns)
        return
    bridge = snap.link(desired.bridge.name)
    if link.mtu != want.mtu:
        diffs.append(f"{name} mtu {link.mtu}: want {want.mtu}")
    if bridge is None or link.master != bridge.index:
        diffs.append(f"{name}: not on {desired.bridge.name}")
    if not link.up:
        diffs.append(f"{name}: down")
    nl.set_link(ns, name, mtu=want.mtu, master=desired.bridge.name, up=True)
    # The bridge must not learn MACs behind the VXLAN port: an address that moves from a
    # remote task to a local one keeps the same MAC, and a learned entry would send its
    # frames out to the old node (for up to the 300 s ageing time). The bridge's static
    # entries for remote MACs (sync_tables) follow the desired state instead.
    nl.set_port_learning(ns, name, False)
    # On a plain network GRO happens below the VXLAN device: the underlay's UDP tunnel GRO
    # merges a stream's segments before decapsulation (on a veth underlay they arrive
    # merged). The device's own pass (its GRO cells) then only queues and re-inspects every
    # packet: off, the plain overlay moved 8.7 % more (median of 8 paired iperf3 rounds,
    # every round faster). WireGuard's TUN device merges nothing, so an encrypted network
    # keeps it (off there: -2.7 %, median of 10 paired rounds).
    if snap.gro.get(name) != want.gro:
        diffs.append(f"{name}: gro {'off' if want.gro else 'on'}")
        nl.set_gro(ns, name, want.gro)


def sync_tables(ns: str, desired: NetworkDesired, snap: nl.Snapshot, diffs: list[str]) -> None:
    """Static FDB (MAC → remote node) and neighbour (IP → MAC) entries on the VXLAN device,
    and the bridge's static entries sending each remote MAC to that device: exactly the
    desired ones, no more."""
    if desired.vxlan is None:
        return
    dev = desired.vxlan.name
    _sync_entries({nl.Fdb(e.mac, e.dst) for e in desired.fdb}, set(snap.fdb.get(dev, ())),
                  lambda e: f"fdb {e.mac} dst {e.dst}",
                  lambda e: nl.add_fdb(ns, dev, e), lambda e: nl.delete_fdb(ns, dev, e), diffs)
    # Without these the bridge floods every frame for a remote task to all its ports: each
    # local task of the network gets a copy of traffic not meant for it (and the clones
    # cost 3-5 % of an overlay TCP stream's throughput here).
    _sync_entries({e.mac for e in desired.fdb}, set(snap.bridge_fdb.get(dev, ())),
                  lambda mac: f"bridge fdb {mac} dev {dev}",
                  lambda mac: nl.add_bridge_fdb(ns, dev, mac),
                  lambda mac: nl.delete_bridge_fdb(ns, dev, mac), diffs)
    _sync_entries({nl.Neighbour(e.ip, e.mac) for e in desired.neighbours},
                  set(snap.neighbours.get(dev, ())),
                  lambda e: f"neigh {e.ip} lladdr {e.mac}",
                  lambda e: nl.add_neighbour(ns, dev, e),
                  lambda e: nl.delete_neighbour(ns, dev, e), diffs)


def _sync_entries(want: set[E], have: set[E], describe: Callable[[E], str],
                  add: Callable[[E], None], delete: Callable[[E], None],
                  diffs: list[str]) -> None:
    """Delete what is there but not wanted, add what is wanted but missing; say each."""
    for entry in sorted(have - want):
        diffs.append(f"{describe(entry)}: unexpected")
        delete(entry)
    for entry in sorted(want - have):
        diffs.append(f"{describe(entry)}: missing")
        add(entry)


def is_veth_peer(name: str) -> bool:
    return name.startswith("vt") and len(name) == 12


def remove_stale_veths(ns: str, desired: NetworkDesired, snap: nl.Snapshot,
                       diffs: list[str], prune: bool) -> None:
    """Legs of sandboxes that were detached (or whose task this node no longer has). Kept
    while `prune` is off: after a restart the worker has not adopted its tasks yet."""
    wanted = {veth.peer for veth in desired.veths}
    for link in snap.links:
        if link.kind == "veth" and is_veth_peer(link.name) and link.name not in wanted:
            if not prune:
                diffs.append(f"veth {link.name}: no sandbox attached (kept for now)")
                continue
            diffs.append(f"veth {link.name}: unexpected")
            nl.delete_link(ns, link.name)


def netns_inode(path: str) -> int:
    """The namespace's identity (0 if it is gone)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def same_netns(veth: Veth) -> bool:
    inode = netns_inode(veth.netns_path)
    return inode != 0 and veth.netns_inode in (0, inode)


def sync_veth(ns: str, bridge: str, veth: Veth, diffs: list[str]) -> None:
    """One sandbox's leg: `veth.ifname` in the sandbox paired with `veth.peer` on the
    bridge. A pair that is half there or mismatched is made again."""
    if not same_netns(veth):
        diffs.append(f"sandbox {veth.key}: namespace {veth.netns_path} gone")
        return
    box = nl.snapshot(veth.netns_path)
    inner = box.link(veth.ifname)
    outer = nl.snapshot(ns).link(veth.peer)
    paired = (inner is not None and outer is not None and inner.kind == "veth"
              and inner.peer_index == outer.index and outer.peer_index == inner.index)
    if not paired:
        diffs.append(f"veth {veth.ifname} of {veth.key}: missing")
        create_veth(ns, bridge, veth, present=inner is not None)
        return
    assert inner is not None and outer is not None
    if inner.mac != veth.mac or inner.mtu != veth.mtu or not inner.up:
        diffs.append(f"veth {veth.ifname} of {veth.key}: mac/mtu/state differ")
        nl.set_link(veth.netns_path, veth.ifname, mac=veth.mac if inner.mac != veth.mac
                    else None, mtu=veth.mtu, up=True)
    sync_addresses(veth.netns_path, veth.ifname, (veth.address,),
                   box.addresses.get(veth.ifname, ()), diffs)
    if outer.mtu != veth.mtu or not outer.up or outer.master == 0:
        diffs.append(f"veth {veth.peer}: mtu/state/bridge differ")
        nl.set_link(ns, veth.peer, mtu=veth.mtu, master=bridge, up=True)


def create_veth(ns: str, bridge: str, veth: Veth, present: bool) -> None:
    nl.delete_link(ns, veth.peer)
    if present:
        nl.delete_link(veth.netns_path, veth.ifname)
    temp = "tp" + secrets.token_hex(4)
    nl.add_veth(ns, veth.peer, temp)
    try:
        nl.move_link(ns, temp, veth.netns_path)
    except BaseException:
        nl.delete_link(ns, veth.peer)
        raise
    nl.set_link(veth.netns_path, temp, new_name=veth.ifname, mac=veth.mac, mtu=veth.mtu)
    nl.add_address(veth.netns_path, veth.ifname, veth.address)
    nl.set_link(veth.netns_path, veth.ifname, up=True)
    nl.set_link(veth.netns_path, "lo", up=True)  # the resolver listens on 127.0.0.11
    nl.set_link(ns, veth.peer, mtu=veth.mtu, master=bridge, up=True)


def tunnel_guard(desired: NetworkDesired, host_netns: nl.Ns,
                 diffs: list[str]) -> NetworkDesired:
    """An encrypted network's VXLAN runs only while this node's tunnel address is on one of
    its interfaces (WireGuard's): otherwise its packets to peers' tunnel addresses could
    leave by another route in clear text."""
    if desired.vxlan is None or not desired.encrypted:
        return desired
    held = {cidr.split("/")[0] for cidrs in nl.addresses(host_netns).values() for cidr in cidrs}
    if desired.vxlan.local in held:
        return desired
    diffs.append(f"tunnel address {desired.vxlan.local} not on this host (WireGuard down?): "
                 "VXLAN off")
    return dataclasses.replace(desired, vxlan=None)


def reconcile_network(desired: NetworkDesired, host_netns: nl.Ns,
                      key: str | None = None, prune: bool = True) -> list[str]:
    """Apply the difference for one network; the differences found (empty: in place).
    With `key`, only that sandbox's leg is checked (attach: fast; other sandboxes and
    stale legs are left to the reconcile loop)."""
    diffs: list[str] = []
    ns = desired.netns
    ensure_netns(ns, diffs)
    desired = tunnel_guard(desired, host_netns, diffs)
    vx = desired.vxlan.name if desired.vxlan else "vxlan0"
    snap = nl.snapshot(ns, [vx])
    for step in (lambda s: sync_bridge(ns, desired, s, diffs),
                 lambda s: sync_vxlan(ns, desired, s, host_netns, diffs)):
        seen = len(diffs)
        step(snap)
        if len(diffs) > seen:  # it changed something (each change is said): read again
            snap = nl.snapshot(ns, [vx])
    sync_tables(ns, desired, snap, diffs)
    if key is None:
        remove_stale_veths(ns, desired, snap, diffs, prune)
    for veth in desired.veths:
        if key is None or veth.key == key:
            sync_veth(ns, desired.bridge.name, veth, diffs)
    return diffs


def remove_network(netns: str) -> None:
    """The whole namespace: its VXLAN device (closing its socket), bridge and veths go."""
    if netns in list_netns():
        for link in nl.links(netns):
            if link.kind == "vxlan":
                nl.delete_link(netns, link.name)
        delete_netns(netns)


def remove_veth(netns: str, peer: str) -> None:
    """A sandbox's leg (both ends go: deleting one end of a veth deletes the pair)."""
    if netns in list_netns():
        nl.delete_link(netns, peer)


def wanted_counts(desired: NetworkDesired) -> dict[str, int]:
    """Per kind, how many entries the network's namespace should hold (doctor's "wanted")."""
    return {"interfaces": 1 + (desired.vxlan is not None) + len(desired.veths),
            "fdb": len(desired.fdb) if desired.vxlan else 0,
            "neighbours": len(desired.neighbours) if desired.vxlan else 0}


def found_counts(desired: NetworkDesired) -> dict[str, int]:
    """Per kind, how many the namespace holds now (before a round repairs it)."""
    if desired.netns not in list_netns():
        return {"interfaces": 0, "fdb": 0, "neighbours": 0}
    vx = desired.vxlan.name if desired.vxlan else "vxlan0"
    snap = nl.snapshot(desired.netns, [vx])
    ours = [link for link in snap.links if link.kind in ("bridge", "vxlan")
            or (link.kind == "veth" and is_veth_peer(link.name))]
    return {"interfaces": len(ours), "fdb": len(snap.fdb.get(vx, ())),
            "neighbours": len(snap.neighbours.get(vx, ()))}
