"""The desired overlay state of a node, computed from an assignments message (pure)."""

from __future__ import annotations

from netdriver.node.desired import (
    FdbEntry,
    NeighEntry,
    Node,
    Sandbox,
    Veth,
    desired_networks,
    mac_of,
    netns_name,
    overlay_mtu,
    owned_netns,
    sandbox_veths,
    veth_peer_name,
    withdrawn,
)
from proto import cluster_pb2
from proto import objects_pb2 as pb

NODE = Node(node_id="n1", underlay_ip="198.18.0.11", underlay_mtu=1500, netns_prefix="shl-n")
NET_ID = "abcdefghijkl0123456789xyz"
PEERS = [cluster_pb2.NetworkPeer(node_id="n1", addr="198.18.0.11", tunnel_addr="10.255.0.1"),
         cluster_pb2.NetworkPeer(node_id="n2", addr="198.18.0.12", tunnel_addr="10.255.0.2"),
         cluster_pb2.NetworkPeer(node_id="n3", addr="198.18.0.13")]


def network(net_id: str = NET_ID, encrypted: bool = False, ingress: bool = False,
            allocated: bool = True) -> pb.Network:
    net = pb.Network(id=net_id, vni=4097)
    net.spec.ingress = ingress
    if encrypted:
        net.spec.driver_options["encrypted"] = ""
    if allocated:
        net.ipam.add(subnet="10.0.1.0/24", gateway="10.0.1.1")
    return net


def state(net: pb.Network, tasks: list[tuple[str, str]]) -> cluster_pb2.NetworkState:
    record = cluster_pb2.ServiceRecord(service_id="s", name="web")
    for node_id, addr in tasks:
        record.tasks.add(task_id=f"t-{addr}", node_id=node_id, addr=addr)
    return cluster_pb2.NetworkState(network=net, services=[record])


def message(*states: cluster_pb2.NetworkState, port: int = 0,
            peers: list[cluster_pb2.NetworkPeer] = PEERS) -> cluster_pb2.AssignmentsMessage:
    return cluster_pb2.AssignmentsMessage(networks=list(states), peers=peers,
                                          data_path_port=port)


def sandbox(*attachments: tuple[str, str]) -> Sandbox:
    return Sandbox("/proc/42/ns/net", tuple(pb.NetworkAttachment(network_id=n, addresses=[a])
                                            for n, a in attachments))


TASKS = [("n1", "10.0.1.5/24"), ("n2", "10.0.1.6/24"), ("n2", "10.0.1.7/24")]
LOCAL = {"task-a": sandbox((NET_ID, "10.0.1.5/24"))}


def test_mac_follows_dockers_scheme() -> None:
    assert mac_of("10.0.1.5/24") == "02:42:0a:00:01:05"
    assert mac_of("192.168.255.1") == "02:42:c0:a8:ff:01"


def test_mtu_leaves_room_for_vxlan_and_wireguard() -> None:
    assert overlay_mtu(1500, encrypted=False) == 1450
    assert overlay_mtu(1500, encrypted=True) == 1390  # IPv4 underlay: WireGuard adds 60
    assert overlay_mtu(1500, encrypted=True, underlay_ip="198.18.0.2") == 1390
    assert overlay_mtu(1500, encrypted=True, underlay_ip="fd00::2") == 1370
    assert overlay_mtu(1500, encrypted=False, underlay_ip="fd00::2") == 1450
    assert overlay_mtu(9000, encrypted=False) == 8950


def test_plain_network_fdb_and_neighbours_for_remote_tasks_only() -> None:
    out = desired_networks(NODE, message(state(network(), TASKS)), LOCAL)
    net = out[NET_ID]
    assert net.netns == "shl-nabcdefghijkl" == netns_name("shl-n", NET_ID)
    assert (net.bridge.name, net.bridge.address, net.bridge.mtu) == ("br0", "10.0.1.1/24", 1450)
    assert net.vxlan is not None
    assert (net.vxlan.vni, net.vxlan.local, net.vxlan.port, net.vxlan.mtu) == (
        4097, "198.18.0.11", 4789, 1450)
    assert not net.vxlan.gro  # the underlay merged the stream already
    assert net.fdb == (FdbEntry("02:42:0a:00:01:06", "198.18.0.12"),
                       FdbEntry("02:42:0a:00:01:07", "198.18.0.12"))
    assert net.neighbours == (NeighEntry("10.0.1.6", "02:42:0a:00:01:06"),
                              NeighEntry("10.0.1.7", "02:42:0a:00:01:07"))
    assert net.veths == (Veth(key="task-a", netns_path="/proc/42/ns/net", ifname="eth0",
                              peer=veth_peer_name("task-a"), address="10.0.1.5/24",
                              mac="02:42:0a:00:01:05", mtu=1450),)
    assert net.problems == () and not net.encrypted


def test_data_path_port_from_the_message() -> None:
    net = desired_networks(NODE, message(state(network(), TASKS), port=7789), LOCAL)[NET_ID]
    assert net.vxlan is not None and net.vxlan.port == 7789


def test_encrypted_network_uses_tunnel_addresses() -> None:
    net = desired_networks(NODE, message(state(network(encrypted=True), TASKS)), LOCAL)[NET_ID]
    assert net.encrypted and net.bridge.mtu == 1390
    assert net.vxlan is not None and (net.vxlan.local, net.vxlan.mtu) == ("10.255.0.1", 1390)
    assert net.vxlan.gro  # WireGuard's TUN device hands packets over one by one
    assert {entry.dst for entry in net.fdb} == {"10.255.0.2"}


def test_encrypted_tunnel_addresses_as_the_store_keeps_them() -> None:
    # The allocator stores "100.127.0.1/16"; VXLAN's local and FDB dst are bare addresses.
    peers = [cluster_pb2.NetworkPeer(node_id=p.node_id, addr=p.addr,
                                     tunnel_addr=p.tunnel_addr + "/16") for p in PEERS]
    net = desired_networks(NODE, message(state(network(encrypted=True), TASKS), peers=peers),
                           LOCAL)[NET_ID]
    assert net.vxlan is not None and net.vxlan.local == "10.255.0.1"
    assert {entry.dst for entry in net.fdb} == {"10.255.0.2"}


def test_encrypted_without_own_tunnel_address_is_not_programmed() -> None:
    peers = [cluster_pb2.NetworkPeer(node_id="n1", addr="198.18.0.11"), PEERS[1]]
    net = desired_networks(NODE, message(state(network(encrypted=True), TASKS), peers=peers),
                           LOCAL)[NET_ID]
    assert net.vxlan is None
    assert net.problems[0] == "no tunnel address yet"
    # The sandbox still gets its leg (the task starts), it just reaches nobody.
    assert [veth.ifname for veth in net.veths] == ["eth0"]


def test_encrypted_peer_without_tunnel_address_never_gets_clear_text() -> None:
    tasks = [*TASKS, ("n3", "10.0.1.8/24")]
    net = desired_networks(NODE, message(state(network(encrypted=True), tasks)), LOCAL)[NET_ID]
    assert {entry.dst for entry in net.fdb} == {"10.255.0.2"}
    assert "10.0.1.8" not in {entry.ip for entry in net.neighbours}
    assert net.problems == ("node n3: no tunnel address yet (its tasks are unreachable)",)


def test_unknown_peer_is_reported_not_guessed() -> None:
    tasks = [*TASKS, ("n9", "10.0.1.9/24")]
    net = desired_networks(NODE, message(state(network(), tasks)), LOCAL)[NET_ID]
    assert len(net.fdb) == 2
    assert net.problems == ("node n9: no peer entry yet (its tasks are unreachable)",)


def test_ingress_network_reaches_other_nodes_mesh_addresses() -> None:
    peers = [cluster_pb2.NetworkPeer(node_id="n1", addr="198.18.0.11",
                                     ingress_addr="10.0.1.2/24"),
             cluster_pb2.NetworkPeer(node_id="n2", addr="198.18.0.12",
                                     ingress_addr="10.0.1.3/24")]
    out = desired_networks(NODE, message(state(network(ingress=True), []), peers=peers),
                           {"ingress": sandbox((NET_ID, "10.0.1.2/24"))})
    assert out[NET_ID].fdb == (FdbEntry("02:42:0a:00:01:03", "198.18.0.12"),)


def test_veth_names_follow_attachment_order() -> None:
    other = "zyxwvutsrqpo0123456789abc"
    box = sandbox((other, "10.0.1.20/24"), (NET_ID, "10.0.1.21/24"))
    out = desired_networks(NODE, message(state(network(), TASKS),
                                         state(network(other), TASKS)), {"k": box})
    assert [v.ifname for v in sandbox_veths(out, "k")] == ["eth1", "eth0"]
    assert out[other].veths[0].ifname == "eth0" and out[NET_ID].veths[0].ifname == "eth1"
    assert len(veth_peer_name("k")) <= 15


def test_a_network_is_on_the_node_only_while_used_here() -> None:
    msg = message(state(network(), TASKS))
    assert desired_networks(NODE, msg, {}) == {}
    # A task of this node that is still meant to run keeps the network ready for it.
    task = msg.tasks.add(id="t", node_id="n1", desired_state=pb.RUNNING)
    task.networks.add(network_id=NET_ID, addresses=["10.0.1.5/24"])
    assert list(desired_networks(NODE, msg, {})) == [NET_ID]
    task.desired_state = pb.SHUTDOWN
    assert desired_networks(NODE, msg, {}) == {}
    # Attached here, but no longer in the message: not wanted either.
    assert desired_networks(NODE, message(), LOCAL) == {}


def test_unallocated_network_is_skipped() -> None:
    assert desired_networks(NODE, message(state(network(allocated=False), TASKS)), LOCAL) == {}


def test_owned_namespaces_leave_others_alone() -> None:
    names = ["shl-nabcdefghijkl", "shl-ningress", "shl-nabcdefghijk", "other",
             "shl-nABCDEFGHIJKL", "shl-nabcdefghijkl-x"]
    assert owned_netns(names, "shl-n") == ["shl-nabcdefghijkl"]


def test_a_malformed_network_spoils_only_itself() -> None:
    other = "zyxwvutsrqpo0123456789abc"
    bad = network(other)
    bad.ipam[0].subnet = "not-a-subnet"
    box = sandbox((NET_ID, "10.0.1.5/24"), (other, "10.0.1.9/24"))
    out = desired_networks(NODE, message(state(network(), TASKS), state(bad, [])), {"k": box})
    assert list(out) == [NET_ID]


def test_withdrawn_takes_away_and_adds_nothing() -> None:
    def tasks(msg: cluster_pb2.AssignmentsMessage) -> dict[str, set[str]]:
        return {f"{n.network.id}/{r.service_id}": {t.addr for t in r.tasks}
                for n in msg.networks for r in n.services}
    old = message(state(network(), TASKS[:2]), state(network("gone"), TASKS[:1]))
    new_service = cluster_pb2.ServiceRecord(service_id="s2", name="api")
    new_service.tasks.add(task_id="t-9", node_id="n2", addr="10.0.1.9/24")
    kept = state(network(), [TASKS[1], TASKS[2]])
    kept.services.append(new_service)
    new = message(kept, state(network("fresh"), TASKS[:1]), port=4800)
    out = withdrawn(old, new)
    # The task that left is gone, the one that arrived (and the new service, and the new
    # network) wait for the full sync; the network that left is gone too.
    assert tasks(out) == {f"{NET_ID}/s": {"10.0.1.6/24"}}
    assert out.data_path_port == 4800 and list(out.peers) == list(new.peers)
    assert withdrawn(new, new) == new
