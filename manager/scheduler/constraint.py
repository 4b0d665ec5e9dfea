"""Placement constraints: `KEY==VALUE` / `KEY!=VALUE` over a node's identity, labels and
platform, as `docker service create --constraint` takes them.

Values compare case-insensitively (as Docker does); a missing label never equals anything,
so `node.labels.zone!=a` holds on a node without a `zone` label. `node.ip` takes an address
or a CIDR network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from manager.errors import InvalidArgument
from proto import objects_pb2 as pb

EQ = "=="
NE = "!="

NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."

_ROLE_NAMES = {pb.WORKER: "worker", pb.MANAGER: "manager"}

# Attribute keys (lowercase) and how to read them from a node.
_FIXED_KEYS: dict[str, Callable[[pb.Node], str]] = {
    "node.id": lambda n: n.id,
    "node.hostname": lambda n: n.description.hostname,
    "node.role": lambda n: _ROLE_NAMES.get(n.role, ""),
    "node.platform.os": lambda n: n.description.platform.os,
    "node.platform.arch": lambda n: n.description.platform.architecture,
    "node.ip": lambda n: n.status.addr,
}
KEYS = (*_FIXED_KEYS, NODE_LABEL_PREFIX + "<name>", ENGINE_LABEL_PREFIX + "<name>")

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9:\-_\s.*()?+\[\]\\^$|/]+$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Constraint:
    key: str    # as written, with the fixed part lowercased: "node.labels.Zone", "node.role"
    op: str     # EQ or NE
    value: str  # as written (trimmed)
    _network: IPNetwork | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    def describe(self) -> str:
        """How a scheduling reason names it: 'constraint node.labels.zone==b'."""
        return f"constraint {self}"

    def matches(self, node: pb.Node) -> bool:
        if self.key == "node.ip":
            equal = _ip_in(node.status.addr, self._network)
        else:
            actual = node_value(self.key, node)
            equal = actual is not None and actual.lower() == self.value.lower()
        return equal if self.op == EQ else not equal


def node_value(key: str, node: pb.Node) -> str | None:
    """A node's value for a normalized key; None when a label is missing."""
    if key.startswith(NODE_LABEL_PREFIX):
        labels = node.spec.annotations.labels
        name = key[len(NODE_LABEL_PREFIX):]
        return labels[name] if name in labels else None
    if key.startswith(ENGINE_LABEL_PREFIX):
        labels = node.description.engine.labels
        name = key[len(ENGINE_LABEL_PREFIX):]
        return labels[name] if name in labels else None
    return _FIXED_KEYS[key](node)


def _ip_in(addr: str, network: IPNetwork | None) -> bool:
    host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr  # drop an IPv4 :port
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return network is not None and ip.version == network.version and ip in network


def parse_constraint(expr: str) -> Constraint:
    def invalid(why: str) -> InvalidArgument:
        return InvalidArgument(f'invalid constraint "{expr}": {why}')

    found = [(expr.find(o), o) for o in (EQ, NE) if o in expr]
    if not found:
        raise invalid("expected KEY==VALUE or KEY!=VALUE")
    op = min(found)[1]
    raw_key, value = (part.strip() for part in expr.split(op, 1))
    if not raw_key or not _KEY_RE.match(raw_key):
        raise invalid(f'"{raw_key}" is not a valid key')
    if not value or not _VALUE_RE.match(value) or EQ in value or NE in value:
        raise invalid(f'"{value}" is not a valid value')
    key = _normalize_key(raw_key)
    if key is None:
        raise invalid(f'unknown key "{raw_key}" (expected one of {", ".join(KEYS)})')
    network = None
    if key == "node.ip":
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise invalid(f'"{value}" is not an IP address or CIDR network') from None
    return Constraint(key, op, value, network)


def _normalize_key(raw: str) -> str | None:
    lower = raw.lower()
    if lower in _FIXED_KEYS:
        return lower
    for prefix in (NODE_LABEL_PREFIX, ENGINE_LABEL_PREFIX):
        if lower.startswith(prefix) and len(raw) > len(prefix):
            return prefix + raw[len(prefix):]  # label names keep their case
    return None


def parse_spread(descriptor: str) -> str:
    """Check a `--placement-pref spread=KEY` descriptor; returns the normalized key."""
    key = _normalize_key(descriptor.strip())
    if key is None or not _KEY_RE.match(descriptor.strip()):
        raise InvalidArgument(
            f'invalid placement preference "spread={descriptor}": expected node.labels.<name>, '
            f"engine.labels.<name> or one of {', '.join(_FIXED_KEYS)}")
    return key


def parse_constraints(exprs: list[str]) -> list[Constraint]:
    """Parse `--constraint` expressions; raises InvalidArgument naming the bad one."""
    return [parse_constraint(e) for e in exprs]


def matches_all(constraints: list[Constraint], node: pb.Node) -> bool:
    return all(c.matches(node) for c in constraints)


def first_unmet(constraints: list[Constraint], node: pb.Node) -> Constraint | None:
    return next((c for c in constraints if not c.matches(node)), None)
