import pytest

from proto import objects_pb2 as pb
from shoal.api import convert
from shoal.api.request import bool_param, fields, filters_param, parse_json
from shoal.api.swarm import split_addr
from shoal.errors import InvalidRequest


def test_keys_match_case_insensitively_and_unknown_keys_are_refused() -> None:
    assert fields({"availability": "drain"}, {"Availability": str}, "NodeSpec") == {
        "Availability": "drain"}
    with pytest.raises(InvalidRequest, match='unknown field "Bogus"'):
        fields({"Bogus": 1}, {"Availability": str}, "NodeSpec")
    with pytest.raises(InvalidRequest, match="wrong type"):
        fields({"Availability": 3}, {"Availability": str}, "NodeSpec")


def test_malformed_json() -> None:
    with pytest.raises(InvalidRequest, match="malformed JSON"):
        parse_json(b"{not json")


def test_bool_and_filters() -> None:
    assert not bool_param("False") and not bool_param("0") and not bool_param(None)
    assert bool_param("1") and bool_param("True")
    assert filters_param('{"role":{"manager":true}}') == {"role": ["manager"]}
    assert filters_param('{"role":["worker"]}') == {"role": ["worker"]}


def test_node_spec_round_trip() -> None:
    spec = convert.node_spec({"Name": "", "Labels": {"zone": "a"}, "Role": "manager",
                              "Availability": "drain"})
    assert spec.desired_role == pb.MANAGER and spec.availability == pb.DRAIN
    node = pb.Node(id="x", spec=spec)
    assert convert.node_json(node)["Spec"] == {"Name": "", "Labels": {"zone": "a"},
                                               "Role": "manager", "Availability": "drain"}
    with pytest.raises(InvalidRequest, match="invalid availability"):
        convert.node_spec({"Availability": "sleepy"})


def test_cluster_spec_refuses_negative_values() -> None:
    with pytest.raises(InvalidRequest, match="must not be negative"):
        convert.cluster_spec({"Dispatcher": {"HeartbeatPeriod": -1}})
    spec = convert.cluster_spec({"CAConfig": {"NodeCertExpiry": 60_000_000_000}})
    assert spec.ca_config.node_cert_expiry_ns == 60_000_000_000


def test_split_addr() -> None:
    assert split_addr("10.1.2.3", 2377, "x") == ("10.1.2.3", 2377)
    assert split_addr("10.1.2.3:4000", 2377, "x") == ("10.1.2.3", 4000)
    with pytest.raises(InvalidRequest):
        split_addr("not-an-ip:1", 2377, "x")
