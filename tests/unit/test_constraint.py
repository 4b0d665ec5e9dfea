import pytest

from manager.errors import InvalidArgument
from manager.scheduler.constraint import first_unmet, matches_all, parse_constraints
from proto import objects_pb2 as pb


def node() -> pb.Node:
    n = pb.Node(id="n1abc", role=pb.MANAGER)
    n.description.hostname = "Host-1"
    n.description.platform.os = "linux"
    n.description.platform.architecture = "x86_64"
    n.description.engine.labels["disk"] = "ssd"
    n.spec.annotations.labels["zone"] = "A"
    n.status.addr = "198.18.0.5"
    return n


@pytest.mark.parametrize("expr,expected", [
    ("node.id==n1abc", True),
    ("node.id!=n1abc", False),
    ("node.hostname==host-1", True),  # values compare case-insensitively
    ("node.role==manager", True),
    ("node.role==worker", False),
    ("node.role!=worker", True),
    ("node.platform.os==linux", True),
    ("node.platform.arch==x86_64", True),
    ("node.labels.zone==a", True),
    ("node.labels.zone!=a", False),
    ("node.labels.zone==b", False),
    ("node.labels.Zone==a", False),  # label names are case-sensitive
    ("node.labels.rack==r1", False),  # missing label never equals
    ("node.labels.rack!=r1", True),
    ("engine.labels.disk==ssd", True),
    ("engine.labels.disk!=ssd", False),
    ("node.ip==198.18.0.5", True),
    ("node.ip==198.18.0.0/16", True),
    ("node.ip!=198.18.0.0/16", False),
    ("node.ip==10.0.0.0/8", False),
    ("NODE.ROLE == manager", True),  # keys case-insensitive, spaces trimmed
])
def test_matches(expr: str, expected: bool) -> None:
    [c] = parse_constraints([expr])
    assert c.matches(node()) is expected


@pytest.mark.parametrize("expr,why", [
    ("node.labels.zone=a", "expected KEY==VALUE or KEY!=VALUE"),
    ("node.role", "expected KEY==VALUE or KEY!=VALUE"),
    ("==a", "is not a valid key"),
    ("node.role==", "is not a valid value"),
    ("node.role==a==b", "is not a valid value"),
    ("node.color==red", 'unknown key "node.color"'),
    ("node.labels.==a", "unknown key"),
    ("node.ip==nowhere", "is not an IP address or CIDR network"),
])
def test_invalid(expr: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_constraints(["node.role==worker", expr])
    assert str(err.value).startswith(f'invalid constraint "{expr}": ')
    assert why in str(err.value)


def test_describe_and_helpers() -> None:
    cs = parse_constraints(["node.role==manager", "node.labels.zone==b"])
    assert str(cs[1]) == "node.labels.zone==b"
    assert cs[1].describe() == "constraint node.labels.zone==b"
    assert not matches_all(cs, node())
    assert first_unmet(cs, node()) == cs[1]
    assert first_unmet(cs[:1], node()) is None


def test_spread_descriptors() -> None:
    from manager.scheduler.constraint import node_value, parse_spread
    assert parse_spread("node.labels.zone") == "node.labels.zone"
    assert parse_spread("Node.Hostname") == "node.hostname"
    assert node_value(parse_spread("engine.labels.disk"), node()) == "ssd"
    assert node_value("node.labels.rack", node()) is None
    with pytest.raises(InvalidArgument, match='invalid placement preference "spread=zone"'):
        parse_spread("zone")
