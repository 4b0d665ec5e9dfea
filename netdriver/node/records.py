"""What the resolver at 127.0.0.11 answers: pure functions over the node's network records.

`build_records` turns the networks of an assignments message into a per-network index of
names (built once per update, so a query is a dictionary lookup); `answer` decides what one
query gets from the networks a sandbox is attached to, or None when the name is not ours and
goes to the node's upstream resolvers. Docker's embedded DNS is the model.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.name
import dns.rdatatype
import dns.reversename

from proto import cluster_pb2
from proto import objects_pb2 as pb

TTL = 600  # Docker's
TASKS_PREFIX = "tasks."
_RNG = random.Random()


@dataclass(frozen=True)
class NameEntry:
    """The addresses one name stands for on one network."""
    addresses: tuple[str, ...]
    shuffle: bool = False  # dnsrr service names: a new order per answer, as Docker does


@dataclass(frozen=True)
class NetworkRecords:
    name: str
    internal: bool = False
    names: Mapping[str, NameEntry] = field(default_factory=dict)  # key: normalised name
    reverse: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # address → names


Records = Mapping[str, NetworkRecords]  # by network id


@dataclass(frozen=True)
class Answer:
    """A local answer (NOERROR): addresses for A/AAAA, names for PTR; empty when the name is
    known but has nothing of that type."""
    addresses: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    ttl: int = TTL


def normalise(name: str) -> str:
    return name.rstrip(".").lower()


def host_address(addr: str) -> str | None:
    """"10.0.1.5/24" → "10.0.1.5"; None for an empty or malformed address (not yet
    allocated), which is left out rather than answered. IPv4 is checked with inet_pton (it
    runs for every task on every update; ipaddress is 30 times slower), which takes only
    the canonical form. Never socket.inet_ntop: importing pysyncobj replaces it, process
    wide, with a Windows-only function that always fails."""
    host = addr.split("/", 1)[0].strip()
    try:
        socket.inet_pton(socket.AF_INET, host)
        return host
    except OSError:
        pass
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        return None


def _unique(hosts: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(h for h in hosts if h is not None))


class _Builder:
    """Collects one network's names; a name given twice (an alias shared by two services)
    answers the union, as Docker's service map does."""

    def __init__(self) -> None:
        self.names: dict[str, NameEntry] = {}
        self.reverse: dict[str, list[str]] = {}

    def add(self, name: str, addresses: tuple[str, ...], shuffle: bool = False) -> None:
        key = normalise(name)
        if not key:
            return
        old = self.names.get(key)
        if old is not None:
            addresses = old.addresses + tuple(a for a in addresses if a not in old.addresses)
            shuffle = shuffle or old.shuffle
        self.names[key] = NameEntry(addresses, shuffle)

    def add_reverse(self, address: str | None, name: str) -> None:
        if address is not None and name:
            names = self.reverse.setdefault(address, [])
            if name not in names:
                names.append(name)


def _service_names(builder: _Builder, svc: cluster_pb2.ServiceRecord, net_name: str) -> None:
    hosts = [host_address(t.addr) for t in svc.tasks]
    tasks = _unique(hosts)
    vip = host_address(svc.vip)
    dnsrr = svc.mode == pb.EndpointSpec.DNSRR
    # A VIP service whose VIP is not allocated yet answers its tasks rather than nothing.
    service_answer = tasks if dnsrr or vip is None else (vip,)
    for name in (svc.name, *svc.aliases):
        if not name:
            continue
        builder.add(name, service_answer, shuffle=dnsrr or vip is None)
        builder.add(TASKS_PREFIX + name, tasks)
    if not dnsrr and svc.name:
        builder.add_reverse(vip, svc.name)
    for task, host in zip(svc.tasks, hosts, strict=True):
        addr = (host,) if host is not None else ()
        for name in (task.name, *task.aliases):
            if name:
                builder.add(name, addr)
        if task.name:
            builder.add_reverse(host, f"{task.name}.{net_name}")


def build_records(networks: Sequence[cluster_pb2.NetworkState]) -> dict[str, NetworkRecords]:
    """The names of every network; the ingress network has none (Docker gives it no service
    discovery: it only carries the routing mesh)."""
    out: dict[str, NetworkRecords] = {}
    for state in networks:
        net = state.network
        if not net.id or net.spec.ingress:
            continue
        builder = _Builder()
        net_name = net.spec.annotations.name or net.id
        for svc in state.services:
            _service_names(builder, svc, net_name)
        out[net.id] = NetworkRecords(
            name=net_name, internal=net.spec.internal, names=builder.names,
            reverse={a: tuple(n) for a, n in builder.reverse.items()})
    return out


def _family(addresses: tuple[str, ...], qtype: int) -> tuple[str, ...]:
    six = qtype == dns.rdatatype.AAAA
    return tuple(a for a in addresses if (":" in a) == six)


def _reverse_address(qname: str) -> str | None:
    try:
        return dns.reversename.to_address(dns.name.from_text(qname))
    except Exception:  # not a reverse name: dnspython raises several kinds
        return None


def _answer_ptr(records: Records, network_ids: Sequence[str], qname: str) -> Answer | None:
    address = _reverse_address(qname)
    if address is None:
        return None
    for net_id in network_ids:
        net = records.get(net_id)
        if net is not None and address in net.reverse:
            return Answer(names=tuple(n + "." for n in net.reverse[address]))
    return None


def _lookup(net: NetworkRecords, key: str) -> NameEntry | None:
    """`key` on `net`, also as `<name>.<network name>` (Docker: the network's own domain;
    what PTR answers give for a task)."""
    entry = net.names.get(key)
    suffix = "." + normalise(net.name)
    if entry is None and key.endswith(suffix):
        entry = net.names.get(key[:-len(suffix)])
    return entry


def answer(records: Records, network_ids: Sequence[str], qname: str, qtype: int,
           rng: random.Random | None = None) -> Answer | None:
    """What a sandbox on `network_ids` (in attachment order) gets for `qname`/`qtype`, or
    None to forward it upstream. The first network that knows the name answers (Docker
    walks the sandbox's endpoints the same way)."""
    if qtype == dns.rdatatype.PTR:
        return _answer_ptr(records, network_ids, qname)
    key = normalise(qname)
    for net_id in network_ids:
        net = records.get(net_id)
        entry = _lookup(net, key) if net is not None else None
        if entry is None:
            continue
        if qtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
            return Answer()  # a known name with no records of this type: NOERROR, empty
        addresses = _family(entry.addresses, qtype)
        if entry.shuffle and len(addresses) > 1:
            shuffled = list(addresses)
            (rng or _RNG).shuffle(shuffled)
            addresses = tuple(shuffled)
        return Answer(addresses=addresses)
    return None


def may_forward(records: Records, network_ids: Sequence[str]) -> bool:
    """Whether names that are not ours go upstream: not for a sandbox whose networks are all
    `--internal` (no way out, as with Docker); yes while the node has no records of one of
    them yet, or for a sandbox on no network."""
    return not network_ids or any(
        net_id not in records or not records[net_id].internal for net_id in network_ids)
