"""What the sandbox resolver answers (netdriver/node/records.py): names of services, tasks
and aliases on the networks a sandbox is attached to; None means "forward upstream". Then
the resolver's pure parts: upstream configuration and wire format."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from netdriver.node.dnswire import address_response, formerr, local_response, render, udp_limit
from netdriver.node.records import (
    TTL,
    Answer,
    answer,
    build_records,
    host_address,
    may_forward,
)
from netdriver.node.resolver import Resolver
from netdriver.node.upstreams import host_upstreams, nameservers, parse_upstream
from proto import cluster_pb2
from proto import objects_pb2 as pb

A, AAAA, PTR, MX = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.PTR, dns.rdatatype.MX


def task(name: str, addr: str, *aliases: str) -> cluster_pb2.EndpointTask:
    return cluster_pb2.EndpointTask(task_id=name, node_id="n1", addr=addr, name=name,
                                    aliases=list(aliases))


def network(net_id: str, name: str, *services: cluster_pb2.ServiceRecord,
            ingress: bool = False) -> cluster_pb2.NetworkState:
    net = pb.Network(id=net_id, spec=pb.NetworkSpec(
        annotations=pb.Annotations(name=name), driver="overlay", ingress=ingress))
    return cluster_pb2.NetworkState(network=net, services=list(services))


def web() -> cluster_pb2.ServiceRecord:
    return cluster_pb2.ServiceRecord(
        service_id="s-web", name="web", mode=pb.EndpointSpec.VIP, vip="10.0.1.2/24",
        aliases=["frontend"],
        tasks=[task("web.1.aaa", "10.0.1.5/24", "web-one"), task("web.2.bbb", "10.0.1.6/24")])


def db() -> cluster_pb2.ServiceRecord:
    return cluster_pb2.ServiceRecord(
        service_id="s-db", name="db", mode=pb.EndpointSpec.DNSRR,
        tasks=[task(f"db.{i}.x{i}", f"10.0.1.{10 + i}/24") for i in range(1, 6)])


RECORDS = build_records([network("net1", "front", web(), db())])


def test_vip_service_answers_its_vip_without_prefix() -> None:
    assert answer(RECORDS, ["net1"], "web", A) == Answer(addresses=("10.0.1.2",), ttl=600)


def test_names_are_case_insensitive_and_may_end_with_a_dot() -> None:
    for qname in ("WEB", "Web.", "web."):
        assert answer(RECORDS, ["net1"], qname, A) == Answer(addresses=("10.0.1.2",))


def test_service_alias_answers_like_the_service() -> None:
    assert answer(RECORDS, ["net1"], "frontend", A) == Answer(addresses=("10.0.1.2",))


def test_tasks_name_answers_every_task_address() -> None:
    got = answer(RECORDS, ["net1"], "tasks.web", A)
    assert got is not None and got.addresses == ("10.0.1.5", "10.0.1.6")
    got = answer(RECORDS, ["net1"], "tasks.frontend.", A)
    assert got is not None and got.addresses == ("10.0.1.5", "10.0.1.6")


def test_dnsrr_service_answers_every_task_in_shuffled_order() -> None:
    every = {f"10.0.1.{10 + i}" for i in range(1, 6)}
    orders = set()
    rng = random.Random(7)
    for _ in range(30):
        got = answer(RECORDS, ["net1"], "db", A, rng)
        assert got is not None and set(got.addresses) == every and len(got.addresses) == 5
        orders.add(got.addresses)
    assert len(orders) > 1, "dnsrr answers must not always come in one order"


def test_task_name_and_task_alias_answer_that_task() -> None:
    assert answer(RECORDS, ["net1"], "web.1.aaa", A) == Answer(addresses=("10.0.1.5",))
    assert answer(RECORDS, ["net1"], "web-one", A) == Answer(addresses=("10.0.1.5",))
    assert answer(RECORDS, ["net1"], "db.3.x3", A) == Answer(addresses=("10.0.1.13",))


def test_names_qualified_with_the_network_name() -> None:
    assert answer(RECORDS, ["net1"], "web.front", A) == Answer(addresses=("10.0.1.2",))
    assert answer(RECORDS, ["net1"], "Web.1.aaa.Front.", A) == Answer(addresses=("10.0.1.5",))
    assert answer(RECORDS, ["net1"], "tasks.web.front", A) == Answer(
        addresses=("10.0.1.5", "10.0.1.6"))
    assert answer(RECORDS, ["net1"], "web.back", A) is None
    assert answer(RECORDS, ["net1"], "front", A) is None


def test_unknown_name_is_forwarded() -> None:
    assert answer(RECORDS, ["net1"], "example.com", A) is None
    assert answer(RECORDS, ["net1"], "tasks.nothing", A) is None


def test_aaaa_and_other_types_of_a_known_name_are_empty_noerror() -> None:
    assert answer(RECORDS, ["net1"], "web", AAAA) == Answer()
    assert answer(RECORDS, ["net1"], "tasks.db", MX) == Answer()


def test_only_the_sandbox_networks_are_seen() -> None:
    records = build_records([network("net1", "front", web()), network("net2", "back", db())])
    assert answer(records, ["net1"], "db", A) is None
    assert answer(records, ["net2"], "web", A) is None
    assert answer(records, ["net9"], "web", A) is None  # a network the node has no records of
    got = answer(records, ["net1", "net2"], "db", A)
    assert got is not None and len(got.addresses) == 5


def test_first_attached_network_that_knows_a_name_wins() -> None:
    other_web = cluster_pb2.ServiceRecord(name="web", vip="10.0.2.2/24",
                                          tasks=[task("web.1.zzz", "10.0.2.9/24")])
    records = build_records([network("net1", "front", web()),
                             network("net2", "back", other_web)])
    assert answer(records, ["net2", "net1"], "web", A) == Answer(addresses=("10.0.2.2",))
    assert answer(records, ["net1", "net2"], "web", A) == Answer(addresses=("10.0.1.2",))


def test_alias_shared_by_two_services_answers_both() -> None:
    api = cluster_pb2.ServiceRecord(name="api", vip="10.0.1.3/24", aliases=["frontend"])
    records = build_records([network("net1", "front", web(), api)])
    got = answer(records, ["net1"], "frontend", A)
    assert got is not None and set(got.addresses) == {"10.0.1.2", "10.0.1.3"}


def test_ingress_network_has_no_names() -> None:
    records = build_records([network("ing", "ingress", web(), ingress=True)])
    assert answer(records, ["ing"], "web", A) is None


def test_vip_service_without_vip_yet_answers_its_tasks() -> None:
    svc = cluster_pb2.ServiceRecord(name="late", tasks=[task("late.1.q", "10.0.1.40/24")])
    records = build_records([network("net1", "front", svc)])
    assert answer(records, ["net1"], "late", A) == Answer(addresses=("10.0.1.40",))


def test_unallocated_task_address_is_left_out() -> None:
    svc = cluster_pb2.ServiceRecord(name="half", mode=pb.EndpointSpec.DNSRR,
                                    tasks=[task("half.1.a", "10.0.1.50/24"),
                                           task("half.2.b", "")])
    records = build_records([network("net1", "front", svc)])
    assert answer(records, ["net1"], "half", A) == Answer(addresses=("10.0.1.50",))
    assert answer(records, ["net1"], "half.2.b", A) == Answer()


def test_ipv6_task_addresses_answer_aaaa_only() -> None:
    svc = cluster_pb2.ServiceRecord(name="six", mode=pb.EndpointSpec.DNSRR,
                                    tasks=[task("six.1.a", "fd00::5/64"),
                                           task("six.2.b", "10.0.1.60/24")])
    records = build_records([network("net1", "front", svc)])
    assert answer(records, ["net1"], "six", AAAA) == Answer(addresses=("fd00::5",))
    assert answer(records, ["net1"], "six", A) == Answer(addresses=("10.0.1.60",))


def test_ptr_of_task_and_vip_addresses() -> None:
    assert answer(RECORDS, ["net1"], "5.1.0.10.in-addr.arpa.", PTR) == Answer(
        names=("web.1.aaa.front.",))
    assert answer(RECORDS, ["net1"], "2.1.0.10.in-addr.arpa", PTR) == Answer(names=("web.",))
    assert answer(RECORDS, ["net1"], "9.9.9.9.in-addr.arpa", PTR) is None
    assert answer(RECORDS, ["net1"], "web", PTR) is None


def test_a_new_record_set_replaces_the_old_one() -> None:
    smaller = cluster_pb2.ServiceRecord()
    smaller.CopyFrom(web())
    del smaller.tasks[1]
    records = build_records([network("net1", "front", smaller)])
    assert answer(records, ["net1"], "tasks.web", A) == Answer(addresses=("10.0.1.5",))
    assert answer(records, ["net1"], "web.2.bbb", A) is None


def test_internal_only_sandboxes_do_not_forward() -> None:
    internal = network("net2", "back", db())
    internal.network.spec.internal = True
    records = build_records([network("net1", "front", web()), internal])
    assert may_forward(records, ["net1"])
    assert not may_forward(records, ["net2"])
    assert may_forward(records, ["net2", "net1"])  # one way out is enough
    assert may_forward(records, ["net2", "unknown"])  # no records of it yet: don't cut off
    assert may_forward(records, [])


def test_host_address() -> None:
    assert host_address("10.0.1.2/24") == "10.0.1.2"
    assert host_address("10.0.1.2") == "10.0.1.2"
    assert host_address("fd00:0::5/64") == "fd00::5"
    assert host_address("") is None
    assert host_address("nonsense") is None
    assert host_address("10.0.1.256/24") is None
    assert TTL == 600


def test_records_survive_pysyncobj_in_the_same_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """shoald on a manager imports pysyncobj, whose win_inet_pton replaces socket.inet_ntop
    process-wide with a function that always fails off Windows; the resolver must not care.
    (Set here explicitly: pysyncobj may have been imported, or its damage undone, before.)"""
    from pysyncobj import win_inet_pton

    monkeypatch.setattr(socket, "inet_ntop", win_inet_pton.inet_ntop)
    with pytest.raises(TypeError):
        socket.inet_ntop(socket.AF_INET, b"\x0a\x00\x00\x01")
    records = build_records([network("net1", "front", web(), db())])
    assert answer(records, ["net1"], "web.1.aaa", A) == Answer(addresses=("10.0.1.5",))
    query = dns.message.make_query("web", A)
    wire = address_response(query, Answer(addresses=("10.0.1.2",)), 512)
    assert wire is not None
    assert dns.message.from_wire(wire).answer[0][0].address == "10.0.1.2"


# --- the resolver's pure parts: configuration and wire format (netdriver/node/resolver.py)

def test_parse_upstream_forms() -> None:
    assert parse_upstream("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_upstream(" 10.0.0.2:5353 ") == ("10.0.0.2", 5353)
    assert parse_upstream("fd00::1") == ("fd00::1", 53)
    assert parse_upstream("[fd00::1]:5300") == ("fd00::1", 5300)
    with pytest.raises(ValueError):
        parse_upstream("dns.example.com")


def test_nameservers_skip_loopback_and_comments() -> None:
    conf = ("# generated\nsearch lab\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n"
            "nameserver ::1\nnameserver fd00::53 # v6\nnameserver bogus\noptions ndots:0\n")
    assert nameservers(conf) == ["10.255.255.53", "fd00::53"]


def test_host_upstreams_fall_back_to_systemd_list(tmp_path: Path) -> None:
    stub, real = tmp_path / "resolv.conf", tmp_path / "systemd.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    real.write_text("nameserver 192.0.2.53\n")
    assert host_upstreams([str(stub), str(real)]) == ["192.0.2.53"]
    assert host_upstreams([str(stub), str(tmp_path / "missing")]) == []
    assert host_upstreams([str(real), str(stub)]) == ["192.0.2.53"]


def test_address_response_is_what_dnspython_would_write() -> None:
    for edns in (-1, 0):
        for rdtype, addrs in ((A, ("10.0.1.2",)), (AAAA, ("fd00::5",)), (A, ())):
            query = dns.message.make_query("Web.", rdtype, use_edns=edns)
            found = Answer(addresses=addrs)
            fast = address_response(query, found, 512)
            assert fast is not None
            assert fast == render(local_response(query, found), 512)
    # Several records: the same message, in our (possibly shuffled) order.
    query = dns.message.make_query("tasks.web", A)
    found = Answer(addresses=("10.0.1.7", "10.0.1.5", "10.0.1.6"))
    fast = address_response(query, found, 512)
    assert fast is not None
    parsed = dns.message.from_wire(fast)
    assert parsed == dns.message.from_wire(render(local_response(query, found), 512))
    assert [rd.address for rd in parsed.answer[0]] == list(found.addresses)
    assert parsed.id == query.id and parsed.flags & dns.flags.AA and parsed.flags & dns.flags.RD


def test_address_response_leaves_the_rest_to_dnspython() -> None:
    query = dns.message.make_query("web", A)
    assert address_response(query, Answer(names=("web.",)), 512) is None
    many = Answer(addresses=tuple(f"10.0.2.{i}" for i in range(1, 101)))
    assert address_response(query, many, 512) is None  # too big: truncation is render's
    chaos = dns.message.make_query("web", A, rdclass=dns.rdataclass.CH)
    assert address_response(chaos, Answer(addresses=("10.0.1.2",)), 512) is None


def test_render_truncates_to_the_records_that_fit() -> None:
    query = dns.message.make_query("tasks.big", A)
    found = Answer(addresses=tuple(f"10.0.2.{i}" for i in range(1, 101)))
    wire = render(local_response(query, found), udp_limit(query))
    parsed = dns.message.from_wire(wire)
    assert len(wire) <= 512 and parsed.flags & dns.flags.TC
    assert len(parsed.answer[0]) == (512 - len("tasks.big") - 2 - 12 - 4) // 16
    big = dns.message.make_query("tasks.big", A, use_edns=0, payload=4096)
    assert udp_limit(big) == 4096
    parsed = dns.message.from_wire(render(local_response(big, found), udp_limit(big)))
    assert not parsed.flags & dns.flags.TC and len(parsed.answer[0]) == 100


def test_formerr_keeps_the_id() -> None:
    reply = formerr(b"\x12\x34garbage")
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    assert parsed.id == 0x1234 and parsed.rcode() == dns.rcode.FORMERR
    assert formerr(b"\x12") is None


def test_resolver_names_show_the_current_records() -> None:
    resolver = Resolver([])
    assert resolver.names("net1") == {}
    resolver.set_networks([network("net1", "front", web())])
    names = resolver.names("net1")
    assert names["web"] == ("10.0.1.2",) and names["tasks.frontend"] == ("10.0.1.5", "10.0.1.6")
    assert names["web-one"] == ("10.0.1.5",)
    resolver.set_networks([])
    assert resolver.names("net1") == {}
