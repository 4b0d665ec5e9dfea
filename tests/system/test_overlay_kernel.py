"""The overlay data plane on a real kernel: two "hosts" as namespaces joined by a veth
(the underlay, 198.18.x.0/24), a Dataplane per host, a sandbox namespace per host."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from netdriver import netlink as nl
from netdriver.node.dataplane import Dataplane, SandboxGone
from netdriver.node.desired import mac_of, veth_peer_name
from netdriver.node.netns import delete_netns, list_netns, run_in_netns_sync
from proto import cluster_pb2
from proto import objects_pb2 as pb

pytestmark = [pytest.mark.system]
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(25))


@dataclass
class Lab:
    tag: str                       # shl-<6 hex>
    underlay: tuple[str, str]      # host addresses
    tunnel: tuple[str, str]        # second link's addresses (stand-ins for WireGuard's)
    planes: list[Dataplane] = field(default_factory=list)

    def host(self, i: int) -> str:
        return f"{self.tag}-h{i + 1}"

    def sandbox(self, name: str) -> str:
        return f"/run/netns/{self.tag}-{name}"


def link_hosts(h1: str, h2: str, names: tuple[str, str], addrs: tuple[str, str]) -> None:
    nl.add_veth(h1, names[0], names[1])
    nl.move_link(h1, names[1], h2)
    for ns, name, addr in ((h1, names[0], addrs[0]), (h2, names[1], addrs[1])):
        nl.add_address(ns, name, f"{addr}/24")
        nl.set_link(ns, name, mtu=1500, up=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = f"shl-{secrets.token_hex(3)}"
    x, y = secrets.randbelow(250), secrets.randbelow(250)
    lab = Lab(tag, (f"198.18.{x}.1", f"198.18.{x}.2"), (f"198.19.{y}.1", f"198.19.{y}.2"))
    try:
        for i in range(2):
            nl.create_netns(lab.host(i))
        link_hosts(lab.host(0), lab.host(1), ("ul0", "ul1"), lab.underlay)
        link_hosts(lab.host(0), lab.host(1), ("tn0", "tn1"), lab.tunnel)
        yield lab
    finally:
        for name in list_netns():
            if name.startswith(tag + "-"):
                delete_netns(name)


@pytest.fixture
async def planes(lab: Lab) -> AsyncIterator[list[Dataplane]]:
    planes = [Dataplane(f"node{i + 1}", lab.underlay[i], f"{lab.tag}-n{i + 1}-",
                        host_netns=lab.host(i)) for i in range(2)]
    tasks = [asyncio.create_task(plane.run()) for plane in planes]
    try:
        yield planes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def network(subnet_prefix: str, vni: int, encrypted: bool = False) -> pb.Network:
    net = pb.Network(id=new_id(), vni=vni)
    net.spec.driver = "overlay"
    if encrypted:
        net.spec.driver_options["encrypted"] = ""
    net.ipam.add(subnet=f"{subnet_prefix}.0/24", gateway=f"{subnet_prefix}.1")
    return net


def state(net: pb.Network, tasks: list[tuple[str, str]]) -> cluster_pb2.NetworkState:
    """tasks: (node id, address CIDR)."""
    record = cluster_pb2.ServiceRecord(service_id=new_id(), name="web")
    for node_id, addr in tasks:
        record.tasks.add(task_id=new_id(), node_id=node_id, addr=addr)
    return cluster_pb2.NetworkState(network=net, services=[record])


def message(lab: Lab, states: list[cluster_pb2.NetworkState],
            tunnels: tuple[str, str] = ("", "")) -> cluster_pb2.AssignmentsMessage:
    peers = [cluster_pb2.NetworkPeer(node_id=f"node{i + 1}", addr=lab.underlay[i],
                                     tunnel_addr=tunnels[i]) for i in range(2)]
    return cluster_pb2.AssignmentsMessage(networks=states, peers=peers)


def make_sandbox(lab: Lab, name: str) -> str:
    nl.create_netns(f"{lab.tag}-{name}")
    return lab.sandbox(name)


def ping(path: str, ip: str, size: int | None = None) -> bool:
    # busybox: this machine has no iputils ping.
    argv = ["nsenter", f"--net={path}", "busybox", "ping", "-c1", "-W2", ip]
    if size is not None:
        argv[-1:-1] = ["-s", str(size)]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def tcp_transfer(server_ns: str, client_ns: str, ip: str, size: int) -> int:
    """Send `size` bytes from a client in `client_ns` to a server in `server_ns`; the number
    of bytes the server received."""
    port = 20000 + secrets.randbelow(20000)
    server = run_in_netns_sync(server_ns, lambda: socket.create_server((ip, port)))
    received: list[int] = []

    def serve() -> None:
        conn, _ = server.accept()
        total = 0
        with conn:
            while chunk := conn.recv(65536):
                total += len(chunk)
        received.append(total)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = run_in_netns_sync(
            client_ns, lambda: socket.create_connection((ip, port), timeout=10))
        with client:
            client.sendall(b"x" * size)
        thread.join(20)
    finally:
        server.close()
    return received[0] if received else -1


async def attach_both(planes: list[Dataplane], boxes: list[str], net: pb.Network,
                      addrs: list[str]) -> None:
    for plane, box, addr in zip(planes, boxes, addrs, strict=True):
        await plane.attach(box, box, [pb.NetworkAttachment(network_id=net.id,
                                                           addresses=[addr])])


def ns_of(plane: Dataplane, net: pb.Network) -> str:
    return f"{plane.netns_prefix}{net.id[:12]}"


async def test_two_hosts_reach_each_other_and_converge(lab: Lab,
                                                       planes: list[Dataplane]) -> None:
    net = network("10.77.3", vni=4100 + secrets.randbelow(1000))
    addrs = ["10.77.3.5/24", "10.77.3.6/24"]
    msg = message(lab, [state(net, [("node1", addrs[0]), ("node2", addrs[1])])])
    boxes = [make_sandbox(lab, "s1"), make_sandbox(lab, "s2")]
    for plane in planes:
        plane.update(msg)
    await attach_both(planes, boxes, net, addrs)

    assert await asyncio.to_thread(ping, boxes[0], "10.77.3.6")
    assert await asyncio.to_thread(ping, boxes[1], "10.77.3.5")
    sent = 64 * 1024
    assert await asyncio.to_thread(tcp_transfer, boxes[1], boxes[0], "10.77.3.6", sent) == sent

    ns1 = ns_of(planes[0], net)
    links = {link.name: link for link in nl.links(ns1)}
    assert links["br0"].mtu == links["vxlan0"].mtu == 1450
    assert links["vxlan0"].local == lab.underlay[0] and links["vxlan0"].port == 4789
    assert not links["vxlan0"].learning and links["vxlan0"].proxy
    eth0 = {link.name: link for link in nl.links(boxes[0])}["eth0"]
    assert (eth0.mtu, eth0.mac) == (1450, mac_of(addrs[0]))
    assert nl.addresses(boxes[0])["eth0"] == (addrs[0],)
    assert [dst for dst, _ in nl.routes(boxes[0])] == ["10.77.3.0/24"]  # no way out
    assert nl.fdb(ns1, "vxlan0") == (nl.Fdb(mac_of(addrs[1]), lab.underlay[1]),)
    assert nl.bridge_fdb(ns1, "vxlan0") == (mac_of(addrs[1]),)
    assert nl.neighbours(ns1, "vxlan0") == (nl.Neighbour("10.77.3.6", mac_of(addrs[1])),)
    # Docker's layout: the VXLAN socket lives in the host namespace, on the underlay.
    sockets = subprocess.run(["nsenter", f"--net=/run/netns/{lab.host(0)}", "ss", "-uln"],
                             capture_output=True, text=True, check=True).stdout
    assert ":4789" in sockets

    # Converged: two more rounds find nothing and add nothing.
    for _ in range(2):
        report = await planes[0].reconcile()
        assert report == {net.id: []}
    assert len(nl.fdb(ns1, "vxlan0")) == 1 and len(nl.neighbours(ns1, "vxlan0")) == 1
    assert [link.name for link in nl.links(ns1)].count("vxlan0") == 1

    # An entry deleted by hand comes back, and the round says what it found.
    subprocess.run(["nsenter", f"--net=/run/netns/{ns1}", "bridge", "fdb", "del",
                    mac_of(addrs[1]), "dev", "vxlan0", "dst", lab.underlay[1], "self"],
                   check=True)
    assert nl.fdb(ns1, "vxlan0") == ()
    report = await planes[0].reconcile()
    assert report == {net.id: [f"fdb {mac_of(addrs[1])} dst {lab.underlay[1]}: missing"]}
    assert planes[0].last_report() == [(net.id, report[net.id])]
    assert nl.fdb(ns1, "vxlan0") == (nl.Fdb(mac_of(addrs[1]), lab.underlay[1]),)
    assert await asyncio.to_thread(ping, boxes[0], "10.77.3.6")
    # The same for the bridge's entry sending that MAC to the VXLAN port.
    subprocess.run(["nsenter", f"--net=/run/netns/{ns1}", "bridge", "fdb", "del",
                    mac_of(addrs[1]), "dev", "vxlan0", "master"], check=True)
    assert nl.bridge_fdb(ns1, "vxlan0") == ()
    report = await planes[0].reconcile()
    assert report == {net.id: [f"bridge fdb {mac_of(addrs[1])} dev vxlan0: missing"]}
    assert nl.bridge_fdb(ns1, "vxlan0") == (mac_of(addrs[1]),)
    # On a plain network GRO is the underlay's job: the VXLAN device's own pass is off.
    assert not nl.gro(ns1, "vxlan0")
    nl.set_gro(ns1, "vxlan0", True)
    assert await planes[0].reconcile() == {net.id: ["vxlan0: gro on"]}
    assert not nl.gro(ns1, "vxlan0")

    # attach again (a task adopted after a restart): nothing duplicated, still reachable.
    await attach_both(planes, boxes, net, addrs)
    assert [link.name for link in nl.links(boxes[0])].count("eth0") == 1
    assert await planes[0].reconcile() == {net.id: []}


def rx_packets(path: str, ifname: str) -> int:
    """The interface's received-packets counter, read inside its namespace."""
    text = subprocess.run(["nsenter", f"--net={path}", "cat", "/proc/net/dev"],
                          capture_output=True, text=True, check=True).stdout
    line = next(line for line in text.splitlines() if line.strip().startswith(f"{ifname}:"))
    return int(line.split(":", 1)[1].split()[1])


def send_datagrams(path: str, ip: str, count: int) -> None:
    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(count):
                sock.sendto(b"shoal-unicast", (ip, 9))
    run_in_netns_sync(path, send)


async def test_unicast_to_a_remote_task_is_not_flooded_to_local_tasks(
        lab: Lab, planes: list[Dataplane]) -> None:
    # Two tasks on host 1 (s1, s3), one on host 2 (s2): s1's frames for s2 go to the VXLAN
    # port only; s3 must not get a copy of them (a bridge that does not know s2's MAC would
    # flood each frame to every port).
    net = network("10.77.8", vni=7400 + secrets.randbelow(500))
    addrs = ["10.77.8.5/24", "10.77.8.6/24", "10.77.8.7/24"]
    msg = message(lab, [state(net, [("node1", addrs[0]), ("node2", addrs[1]),
                                    ("node1", addrs[2])])])
    boxes = [make_sandbox(lab, "s1"), make_sandbox(lab, "s2"), make_sandbox(lab, "s3")]
    for plane in planes:
        plane.update(msg)
    await attach_both(planes, boxes[:2], net, addrs[:2])
    await planes[0].attach(boxes[2], boxes[2], [pb.NetworkAttachment(network_id=net.id,
                                                                     addresses=[addrs[2]])])
    assert await asyncio.to_thread(ping, boxes[0], "10.77.8.6")
    assert await asyncio.to_thread(ping, boxes[2], "10.77.8.6")

    before = rx_packets(boxes[2], "eth0")
    await asyncio.to_thread(send_datagrams, boxes[0], "10.77.8.6", 2000)
    assert await asyncio.to_thread(ping, boxes[0], "10.77.8.6")  # they went out
    assert rx_packets(boxes[2], "eth0") - before < 20


async def test_big_transfer_fits_the_mtu(lab: Lab, planes: list[Dataplane]) -> None:
    net = network("10.77.4", vni=5200 + secrets.randbelow(1000))
    addrs = ["10.77.4.5/24", "10.77.4.6/24"]
    msg = message(lab, [state(net, [("node1", addrs[0]), ("node2", addrs[1])])])
    boxes = [make_sandbox(lab, "s1"), make_sandbox(lab, "s2")]
    for plane in planes:
        plane.update(msg)
    await attach_both(planes, boxes, net, addrs)
    # The largest ping that fits the overlay MTU (1450 - 28 bytes of headers).
    assert await asyncio.to_thread(ping, boxes[0], "10.77.4.6", 1422)
    size = 10 * 1024 * 1024
    assert await asyncio.to_thread(tcp_transfer, boxes[1], boxes[0], "10.77.4.6", size) == size


async def test_networks_are_isolated_and_removed(lab: Lab, planes: list[Dataplane]) -> None:
    # Same subnet on purpose: only the VNI separates them.
    net_a = network("10.77.5", vni=6300 + secrets.randbelow(500))
    net_b = network("10.77.5", vni=6900 + secrets.randbelow(500))
    a_addrs, b_addrs = ["10.77.5.5/24", "10.77.5.6/24"], ["10.77.5.7/24", "10.77.5.8/24"]
    states = [state(net_a, [("node1", a_addrs[0]), ("node2", a_addrs[1])]),
              state(net_b, [("node1", b_addrs[0]), ("node2", b_addrs[1])])]
    a_boxes = [make_sandbox(lab, "a1"), make_sandbox(lab, "a2")]
    b_boxes = [make_sandbox(lab, "b1"), make_sandbox(lab, "b2")]
    for plane in planes:
        plane.update(message(lab, states))
    await attach_both(planes, a_boxes, net_a, a_addrs)
    await attach_both(planes, b_boxes, net_b, b_addrs)
    assert await asyncio.to_thread(ping, b_boxes[0], "10.77.5.8")
    assert await asyncio.to_thread(ping, a_boxes[0], "10.77.5.6")
    assert not await asyncio.to_thread(ping, b_boxes[0], "10.77.5.6")
    assert not await asyncio.to_thread(ping, a_boxes[1], "10.77.5.7")

    # Network B leaves host 1: detach its sandbox, then an update without it.
    await planes[0].detach(b_boxes[0])
    planes[0].update(message(lab, [states[0]]))
    await planes[0].reconcile()
    names = list_netns()
    assert ns_of(planes[0], net_b) not in names and ns_of(planes[0], net_a) in names
    assert "eth0" not in {link.name for link in nl.links(b_boxes[0])}
    assert [link.name for link in nl.links(lab.host(0)) if link.kind == "vxlan"] == []
    # Network A's last task on host 1 goes too: nothing of the overlay is left there.
    await planes[0].detach(a_boxes[0])
    planes[0].update(message(lab, []))
    await planes[0].reconcile()
    assert [n for n in list_netns() if n.startswith(planes[0].netns_prefix)] == []


async def test_encrypted_network_uses_tunnel_addresses(lab: Lab,
                                                       planes: list[Dataplane]) -> None:
    net = network("10.77.6", vni=7500 + secrets.randbelow(500), encrypted=True)
    addrs = ["10.77.6.5/24", "10.77.6.6/24"]
    states = [state(net, [("node1", addrs[0]), ("node2", addrs[1])])]
    boxes = [make_sandbox(lab, "e1"), make_sandbox(lab, "e2")]
    # No tunnel address for node1 yet: the sandbox gets its leg, but no VXLAN device, and
    # the round says why; never clear text over the underlay.
    planes[0].update(message(lab, states, tunnels=("", lab.tunnel[1])))
    await planes[0].attach(boxes[0], boxes[0],
                           [pb.NetworkAttachment(network_id=net.id, addresses=[addrs[0]])])
    ns1 = ns_of(planes[0], net)
    report = await planes[0].reconcile()
    assert report[net.id][0] == "no tunnel address yet"
    assert "vxlan0" not in {link.name for link in nl.links(ns1)}

    for plane in planes:
        plane.update(message(lab, states, tunnels=lab.tunnel))
    await planes[0].reconcile()
    await planes[1].attach(boxes[1], boxes[1],
                           [pb.NetworkAttachment(network_id=net.id, addresses=[addrs[1]])])
    vx = {link.name: link for link in nl.links(ns1)}["vxlan0"]
    assert (vx.local, vx.mtu) == (lab.tunnel[0], 1390)
    assert nl.gro(ns1, "vxlan0")  # WireGuard's TUN device merges nothing: the VXLAN device does
    assert nl.fdb(ns1, "vxlan0") == (nl.Fdb(mac_of(addrs[1]), lab.tunnel[1]),)
    assert {link.name: link for link in nl.links(boxes[0])}["eth0"].mtu == 1390
    assert await asyncio.to_thread(ping, boxes[0], "10.77.6.6")
    assert await planes[0].reconcile() == {net.id: []}

    # WireGuard goes down on host 1 (its tunnel address is gone): the VXLAN device goes
    # too, rather than sending by whatever route is left; it comes back with the address.
    nl.delete_address(lab.host(0), "tn0", f"{lab.tunnel[0]}/24")
    report = await planes[0].reconcile()
    assert report[net.id] == [
        f"tunnel address {lab.tunnel[0]} not on this host (WireGuard down?): VXLAN off",
        "vxlan0: present but must not be"]
    assert "vxlan0" not in {link.name for link in nl.links(ns1)}
    assert not await asyncio.to_thread(ping, boxes[0], "10.77.6.6")
    nl.add_address(lab.host(0), "tn0", f"{lab.tunnel[0]}/24")
    report = await planes[0].reconcile()
    mac = mac_of(addrs[1])
    assert report[net.id] == ["vxlan0: missing", f"fdb {mac} dst {lab.tunnel[1]}: missing",
                              f"bridge fdb {mac} dev vxlan0: missing",
                              f"neigh 10.77.6.6 lladdr {mac}: missing"]
    assert await asyncio.to_thread(ping, boxes[0], "10.77.6.6")


def with_local_tasks(msg: cluster_pb2.AssignmentsMessage, node_id: str, net: pb.Network,
                     addr: str) -> cluster_pb2.AssignmentsMessage:
    """The message as this node gets it: its own task running on `net`."""
    out = cluster_pb2.AssignmentsMessage()
    out.CopyFrom(msg)
    task = out.tasks.add(id=new_id(), node_id=node_id, desired_state=pb.RUNNING)
    task.networks.add(network_id=net.id, addresses=[addr])
    return out


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_restart_adopts_running_sandboxes_and_drops_leftovers(
        lab: Lab, planes: list[Dataplane]) -> None:
    net = network("10.77.7", vni=8100 + secrets.randbelow(500))
    old = network("10.77.8", vni=8700 + secrets.randbelow(500))
    addrs, old_addr = ["10.77.7.5/24", "10.77.7.6/24"], "10.77.8.5/24"
    states = [state(net, [("node1", addrs[0]), ("node2", addrs[1])]),
              state(old, [("node1", old_addr)])]
    boxes = [make_sandbox(lab, "r1"), make_sandbox(lab, "r2")]
    old_box = make_sandbox(lab, "r3")
    for plane in planes:
        plane.update(message(lab, states))
    await attach_both(planes, boxes, net, addrs)
    await planes[0].attach(old_box, old_box, [pb.NetworkAttachment(network_id=old.id,
                                                                   addresses=[old_addr])])
    ns1, old_ns = ns_of(planes[0], net), ns_of(planes[0], old)
    links_before = sorted(link.name for link in nl.links(ns1))

    # shoald restarts on host 1 (a new Dataplane); meanwhile the task on `old` ended.
    fresh = Dataplane("node1", lab.underlay[0], planes[0].netns_prefix, host_netns=lab.host(0))
    assert await fresh.reconcile() == {}  # no message yet: nothing is known to be unwanted
    assert old_ns in list_netns()
    fresh.update(with_local_tasks(message(lab, states[:1]), "node1", net, addrs[0]))
    report = await fresh.reconcile()
    # The running task's leg is kept until the worker adopts it; the ended one's network goes.
    peer = veth_peer_name(boxes[0])
    assert report[net.id] == [f"veth {peer}: no sandbox attached (kept for now)"]
    assert report[old_ns] == [f"namespace {old_ns}: not wanted, removed"]
    assert old_ns not in list_netns()
    assert await asyncio.to_thread(ping, boxes[0], "10.77.7.6")

    await fresh.attach(boxes[0], boxes[0], [pb.NetworkAttachment(network_id=net.id,
                                                                 addresses=[addrs[0]])])
    assert await fresh.reconcile() == {net.id: []}
    assert sorted(link.name for link in nl.links(ns1)) == links_before
    assert nl.fdb(ns1, "vxlan0") == (nl.Fdb(mac_of(addrs[1]), lab.underlay[1]),)
    assert await asyncio.to_thread(ping, boxes[0], "10.77.7.6")
    check = fresh.network_report().networks[0]
    assert (check.network_id, dict(check.wanted), list(check.differences)) == (
        net.id, {"interfaces": 3, "fdb": 1, "neighbours": 1}, [])
    assert dict(check.found) == dict(check.wanted)


async def test_loop_follows_updates(lab: Lab, planes: list[Dataplane]) -> None:
    net = network("10.77.9", vni=9100 + secrets.randbelow(500))
    addrs = ["10.77.9.5/24", "10.77.9.6/24"]
    boxes = [make_sandbox(lab, "l1"), make_sandbox(lab, "l2")]
    for plane in planes:
        plane.update(message(lab, [state(net, [("node1", addrs[0]), ("node2", addrs[1])])]))
    await attach_both(planes, boxes, net, addrs)
    ns1 = ns_of(planes[0], net)

    async def fdb_is(*addresses: str) -> bool:
        want = tuple(sorted(nl.Fdb(mac_of(a), lab.underlay[1]) for a in addresses))
        return await asyncio.to_thread(nl.fdb, ns1, "vxlan0") == want

    # The task on node 2 is replaced by another: the loop follows (nothing left behind).
    planes[0].update(message(lab, [state(net, [("node1", addrs[0]), ("node2", "10.77.9.7/24")])]))
    # (one round writes the FDB entry, then the neighbour: wait for both)
    want_neigh = (nl.Neighbour("10.77.9.7", mac_of("10.77.9.7/24")),)

    async def follows() -> bool:
        return await fdb_is("10.77.9.7/24") and await asyncio.to_thread(
            nl.neighbours, ns1, "vxlan0") == want_neigh
    await eventually(follows, "the new remote task's FDB and neighbour entries")

    # A malformed address in the store spoils only its own network.
    bad = network("10.77.10", vni=9700)
    bad.ipam[0].subnet = "not-a-subnet"
    planes[0].update(message(lab, [state(net, [("node1", addrs[0]), ("node2", "10.77.9.8/24")]),
                                   state(bad, [])]))
    await eventually(lambda: fdb_is("10.77.9.8/24"), "the loop to apply the next update")


async def test_loop_retries_until_the_underlay_is_there(
        lab: Lab, planes: list[Dataplane], caplog: pytest.LogCaptureFixture) -> None:
    # shoald starts before its underlay address is configured: rounds fail (logged), the
    # loop keeps going and converges once the address appears.
    net = network("10.77.13", vni=9800 + secrets.randbelow(90))
    underlay = lab.underlay[0].rsplit(".", 1)[0] + ".3"
    late = Dataplane("node3", underlay, f"{lab.tag}-n3-", host_netns=lab.host(0))
    loop = asyncio.create_task(late.run())
    try:
        msg = with_local_tasks(message(lab, [state(net, [("node3", "10.77.13.5/24")])]),
                               "node3", net, "10.77.13.5/24")
        late.update(msg)

        async def failed() -> bool:
            return f"no interface holds {underlay}" in caplog.text
        await eventually(failed, "a failing round")
        nl.add_address(lab.host(0), "ul0", f"{underlay}/24")
        late.update(msg)
        ns = ns_of(late, net)

        async def programmed() -> bool:
            names = await asyncio.to_thread(list_netns)
            return ns in names and "vxlan0" in {
                link.name for link in await asyncio.to_thread(nl.links, ns)}
        await eventually(programmed, "the network's namespace after the address appeared")
        vx = {link.name: link for link in nl.links(ns)}["vxlan0"]
        assert (vx.local, vx.mtu) == (underlay, 1450)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


class Recorder:
    """An extra part (resolver, nftables, WireGuard) as the data plane sees it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.backends: list[set[str]] = []  # the service tasks of each sync

    async def sync(self, message: cluster_pb2.AssignmentsMessage) -> None:
        self.calls.append(("sync", str(len(message.networks))))
        self.backends.append({t.task_id for n in message.networks for r in n.services
                              for t in r.tasks})

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None:
        # Extras run once the sandbox's interfaces are in place.
        names = {link.name for link in await asyncio.to_thread(nl.links, netns_path)}
        self.calls.append(("attach", f"{key} eth0={'eth0' in names}"))

    async def detach(self, key: str) -> None:
        self.calls.append(("detach", key))


async def test_extras_follow_updates_attach_and_detach(lab: Lab,
                                                       planes: list[Dataplane]) -> None:
    extra = Recorder()
    planes[0].extras.append(extra)
    net = network("10.77.11", vni=9900 + secrets.randbelow(90))
    box = make_sandbox(lab, "x1")
    planes[0].update(message(lab, [state(net, [("node1", "10.77.11.5/24")])]))

    async def synced() -> bool:
        return ("sync", "1") in extra.calls
    await eventually(synced, "the extra's sync after an update")
    await planes[0].attach("k1", box, [pb.NetworkAttachment(network_id=net.id,
                                                            addresses=["10.77.11.5/24"])])
    await planes[0].detach("k1")
    assert [c for c in extra.calls if c[0] != "sync"] == [("attach", "k1 eth0=True"),
                                                          ("detach", "k1")]
    assert "eth0" not in {link.name for link in nl.links(box)}


async def test_a_leaving_task_is_withdrawn_before_the_kernel_reconcile(
        lab: Lab, planes: list[Dataplane]) -> None:
    extra = Recorder()
    planes[0].extras.append(extra)
    net = network("10.77.15", vni=9400 + secrets.randbelow(90))
    first = state(net, [("node1", "10.77.15.5/24"), ("node2", "10.77.15.6/24")])
    leaving, staying = (t.task_id for t in first.services[0].tasks)

    def seen(*tasks: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return set(tasks) in extra.backends
        return check
    planes[0].update(message(lab, [first]))
    await eventually(seen(leaving, staying), "the first sync")
    after = cluster_pb2.NetworkState()
    after.CopyFrom(first)
    del after.services[0].tasks[0]
    arriving = after.services[0].tasks.add(task_id=new_id(), node_id="node2",
                                           addr="10.77.15.7/24").task_id
    # A sandbox being plumbed holds the kernel reconcile (as a task starting next to the
    # client does): the leaving task must leave the load balancers and resolvers anyway,
    # and the arriving one wait for its FDB and neighbour entries.
    async with planes[0]._lock:
        planes[0].update(message(lab, [after]))
        await eventually(seen(staying), "the leaving task withdrawn while the reconcile waits")
        assert all(arriving not in seen for seen in extra.backends)
    await eventually(seen(staying, arriving), "the arriving task added after the reconcile")


async def test_a_reused_namespace_path_is_not_plumbed(lab: Lab,
                                                      planes: list[Dataplane]) -> None:
    net = network("10.77.12", vni=9990 + secrets.randbelow(9))
    box = make_sandbox(lab, "p1")
    planes[0].update(message(lab, [state(net, [("node1", "10.77.12.5/24")])]))
    await planes[0].attach("k1", box, [pb.NetworkAttachment(network_id=net.id,
                                                            addresses=["10.77.12.5/24"])])
    # The sandbox ends and its path now names another namespace (as /proc/PID after PID
    # reuse): the data plane must not put a leg into it.
    delete_netns(f"{lab.tag}-p1")
    nl.create_netns(f"{lab.tag}-p1")
    report = await planes[0].reconcile()
    assert report[net.id] == [f"sandbox k1: namespace {box} gone"]
    assert [link.name for link in nl.links(box)] == ["lo"]


async def test_attach_to_a_gone_namespace_says_so(lab: Lab, planes: list[Dataplane]) -> None:
    net = network("10.77.14", vni=9990)
    planes[0].update(message(lab, [state(net, [("node1", "10.77.14.5/24")])]))
    gone = lab.sandbox("never-made")
    with pytest.raises(SandboxGone, match="never-made"):
        await planes[0].attach("k1", gone, [pb.NetworkAttachment(network_id=net.id,
                                                                 addresses=["10.77.14.5/24"])])
