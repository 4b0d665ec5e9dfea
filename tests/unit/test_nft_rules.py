"""The nftables text that sandboxes and the routing mesh get (pure functions)."""

from __future__ import annotations

from netdriver.node import mesh, nft
from proto import cluster_pb2
from proto import objects_pb2 as pb

DNSRR = pb.EndpointSpec.ResolutionMode.DNSRR


def record(vip: str, *addrs: str, mode: int = 0, name: str = "web") -> cluster_pb2.ServiceRecord:
    return cluster_pb2.ServiceRecord(
        service_id=f"id-{name}", name=name, mode=mode, vip=vip,  # type: ignore[arg-type]
        tasks=[cluster_pb2.EndpointTask(task_id=f"t{i}", addr=a) for i, a in enumerate(addrs)])


def test_replace_is_one_transaction_that_creates_deletes_and_defines() -> None:
    text = nft.sandbox_ruleset([])
    lines = text.splitlines()
    assert lines[0] == "table ip shoal"
    assert lines[1] == "delete table ip shoal"
    assert lines[2] == "table ip shoal {"
    assert text.count("table ip shoal") == 3


def test_vip_spreads_over_tasks_with_numgen_map() -> None:
    text = nft.sandbox_ruleset([record("10.0.1.2/24", "10.0.1.7/24", "10.0.1.5/24",
                                       "10.0.1.6/24")])
    assert ("ip daddr 10.0.1.2 dnat to numgen random mod 3 map "
            "{ 0 : 10.0.1.5, 1 : 10.0.1.6, 2 : 10.0.1.7 }") in text
    assert "type nat hook output priority -100" in text
    assert "reject" not in text


def test_single_task_is_plain_dnat() -> None:
    text = nft.sandbox_ruleset([record("10.0.1.2/24", "10.0.1.5/24")])
    assert "ip daddr 10.0.1.2 dnat to 10.0.1.5\n" in text
    assert "numgen" not in text


def test_vip_without_tasks_is_refused_with_tcp_reset() -> None:
    text = nft.sandbox_ruleset([record("10.0.1.9/24")])
    assert "ip daddr 10.0.1.9 meta l4proto tcp reject with tcp reset" in text
    assert "ip daddr 10.0.1.9 reject\n" in text
    assert "dnat" not in text
    assert "type filter hook output priority 0" in text


def test_dnsrr_services_and_services_without_vip_are_left_alone() -> None:
    text = nft.sandbox_ruleset([record("", "10.0.1.5/24", name="novip"),
                                record("10.0.1.3/24", "10.0.1.8/24", mode=DNSRR)])
    assert "daddr" not in text


def test_same_state_in_another_order_gives_the_same_text() -> None:
    a = nft.sandbox_ruleset([record("10.0.1.2/24", "10.0.1.5/24", "10.0.1.6/24", name="a"),
                             record("10.0.2.2/24", "10.0.2.5/24", name="b")])
    b = nft.sandbox_ruleset([record("10.0.2.2/24", "10.0.2.5/24", name="b"),
                             record("10.0.1.2/24", "10.0.1.6/24", "10.0.1.5/24", name="a")])
    assert a == b


def test_listed_backends_reads_our_text_and_nft_listing() -> None:
    text = nft.sandbox_ruleset([record("10.0.1.2/24", "10.0.1.5/24", "10.0.1.6/24"),
                                record("10.0.1.3/24", "10.0.1.8/24", name="one"),
                                record("10.0.1.9/24", name="none")])
    want = {"10.0.1.2": ["10.0.1.5", "10.0.1.6"], "10.0.1.3": ["10.0.1.8"], "10.0.1.9": []}
    assert nft.listed_backends(text) == want
    # `nft list` prints the refusal of TCP without the l4proto match
    listing = ("\t\tip daddr 10.0.1.2 dnat to numgen random mod 2 map "
               "{ 0 : 10.0.1.5, 1 : 10.0.1.6 }\n\t\tip daddr 10.0.1.3 dnat to 10.0.1.8\n"
               "\t\tip daddr 10.0.1.9 reject with tcp reset\n\t\tip daddr 10.0.1.9 reject\n")
    assert nft.listed_backends(listing) == want


def test_pick_with_port() -> None:
    assert nft.pick(["10.0.0.5", "10.0.0.6"], 80) == (
        "dnat to numgen random mod 2 map { 0 : 10.0.0.5, 1 : 10.0.0.6 }:80")
    assert nft.pick(["10.0.0.5"], 80) == "dnat to 10.0.0.5:80"


# ---------------------------------------------------------------- routing mesh

def ingress_network(*records: cluster_pb2.ServiceRecord) -> list[cluster_pb2.NetworkState]:
    ingress = pb.Network(id="ing", spec=pb.NetworkSpec(ingress=True))
    other = pb.Network(id="app")
    return [cluster_pb2.NetworkState(network=other, services=[
                record("10.0.1.2/24", "10.0.1.5/24", name="other")]),
            cluster_pb2.NetworkState(network=ingress, services=list(records))]


def published(rec: cluster_pb2.ServiceRecord, pub: int, target: int,
              proto: int = 0, mode: int = 0) -> cluster_pb2.ServiceRecord:
    rec.ports.append(pb.PortConfig(protocol=proto, published_port=pub,  # type: ignore[arg-type]
                                   target_port=target, publish_mode=mode))  # type: ignore[arg-type]
    return rec


def test_ingress_ports_come_from_the_ingress_network_only() -> None:
    web = published(record("10.255.0.2/16", "10.255.0.8/16", "10.255.0.7/16"), 8080, 80)
    published(web, 5353, 53, proto=pb.PortConfig.Protocol.UDP)
    published(web, 9000, 90, mode=pb.PortConfig.PublishMode.HOST)  # not the mesh's
    assert mesh.ingress_ports(ingress_network(web)) == [
        mesh.Published("tcp", 8080, 80, ("10.255.0.7", "10.255.0.8")),
        mesh.Published("udp", 5353, 53, ("10.255.0.7", "10.255.0.8")),
    ]
    assert mesh.ingress_ports(ingress_network()[:1]) == []


def test_host_ruleset_sends_local_addresses_to_the_ingress_namespace() -> None:
    ports = [mesh.Published("tcp", 8080, 80, ("10.255.0.7",)),
             mesh.Published("udp", 5353, 53, ())]
    text = mesh.host_ruleset(ports, [])
    assert text.startswith("table ip shoal_mesh\ndelete table ip shoal_mesh\n")
    rule_tcp = "fib daddr type local tcp dport 8080 dnat to 169.254.77.2\n"
    rule_udp = "fib daddr type local udp dport 5353 dnat to 169.254.77.2\n"
    assert text.count(rule_tcp) == 2 and text.count(rule_udp) == 2  # prerouting and output
    assert "type nat hook prerouting priority -100" in text
    assert "type nat hook output priority -100" in text
    assert 'oifname "shi0" masquerade' in text


def test_host_mode_ports_go_to_the_local_task() -> None:
    task = pb.Task(id="t1", networks=[pb.NetworkAttachment(network_id="app",
                                                           addresses=["10.0.1.9/24"])])
    task.endpoint.ports.append(pb.PortConfig(published_port=9000, target_port=90,
                                             publish_mode=pb.PortConfig.PublishMode.HOST))
    task.endpoint.ports.append(pb.PortConfig(published_port=8080, target_port=80))
    no_addr = pb.Task(id="t2")
    no_addr.endpoint.ports.append(pb.PortConfig(published_port=9001, target_port=90,
                                                publish_mode=pb.PortConfig.PublishMode.HOST))
    host = mesh.host_ports([task, no_addr])
    assert host == [mesh.Published("tcp", 9000, 90, ("10.0.1.9",))]
    text = mesh.host_ruleset([], host)
    assert "fib daddr type local tcp dport 9000 dnat to 10.0.1.9:90\n" in text
    assert "ct status dnat ip daddr { 10.0.1.9 } masquerade" in text


def test_ingress_ruleset_spreads_and_masquerades_towards_tasks() -> None:
    text = mesh.ingress_ruleset([mesh.Published("tcp", 8080, 80, ("10.255.0.7", "10.255.0.8")),
                                 mesh.Published("tcp", 8081, 81, ())])
    assert ('iifname "shi1" tcp dport 8080 dnat to numgen random mod 2 map '
            "{ 0 : 10.255.0.7, 1 : 10.255.0.8 }:80") in text
    assert "8081" not in text  # no task: nothing DNATed, the namespace resets it
    assert 'ct status dnat oifname != "shi1" masquerade' in text


def test_host_mode_task_on_the_ingress_network_is_reached_through_the_ingress_namespace() -> None:
    task = pb.Task(id="t1", networks=[
        pb.NetworkAttachment(network_id="app", addresses=["10.0.1.9/24"]),
        pb.NetworkAttachment(network_id="ing", addresses=["10.255.0.9/16"])])
    task.endpoint.ports.append(pb.PortConfig(published_port=9000, target_port=90,
                                             publish_mode=pb.PortConfig.PublishMode.HOST))
    host = mesh.host_ports([task], "ing")
    assert host == [mesh.Published("tcp", 9000, 90, ("10.255.0.9",), via_ingress=True)]
    host_text = mesh.host_ruleset([], host)
    assert "fib daddr type local tcp dport 9000 dnat to 169.254.77.2\n" in host_text
    assert "10.255.0.9" not in host_text
    ingress_text = mesh.ingress_ruleset([], host=host)
    assert 'iifname "shi1" tcp dport 9000 dnat to 10.255.0.9:90\n' in ingress_text
    # Without knowing the ingress network, its first address, straight from the host.
    assert mesh.host_ports([task]) == [mesh.Published("tcp", 9000, 90, ("10.0.1.9",))]
