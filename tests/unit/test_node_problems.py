"""What a node reports about itself: a failing certificate renewal says since when, why and
when the certificate expires; the leader shows it as the node's status message and clears it
when the node stops reporting it (a heartbeat of a node marked down brings it back)."""

import datetime

import pki
from manager.ca.authority import BACKDATE
from manager.dispatcher.sessions import mark_ready_again, session_opened
from proto import cluster_pb2
from proto import objects_pb2 as pb
from shoal.renewal import renew_at, renewal_problem


def test_renewal_problem_names_the_error_and_the_deadline() -> None:
    since = datetime.datetime(2026, 12, 4, 10, 0, 0, tzinfo=datetime.UTC)
    expires = datetime.datetime(2026, 12, 5, 9, 30, 0, tzinfo=datetime.UTC)
    text = renewal_problem(since, expires, "unavailable: no leader")
    assert text == ("certificate renewal failing since 2026-12-04T10:00:00Z (unavailable: no "
                    "leader); the node certificate expires at 2026-12-05T09:30:00Z")


def test_renewal_counts_the_lifetime_from_issue_not_from_the_backdated_start() -> None:
    issued = datetime.datetime(2026, 12, 4, 10, 0, 0, tzinfo=datetime.UTC)
    ident = pki.Identity("n1", pb.WORKER, "c1", issued - BACKDATE,
                         issued + datetime.timedelta(hours=10))
    assert renew_at(ident, 0.5) == issued + datetime.timedelta(hours=5)
    assert renew_at(ident, 0.8) == issued + datetime.timedelta(hours=8)


def test_a_heartbeat_sets_the_message_and_brings_a_down_node_back() -> None:
    node = pb.Node(id="n1")
    node.status.state = pb.NODE_DOWN
    node.status.message = "heartbeat failure"
    assert mark_ready_again(node, message="certificate renewal failing since …")
    assert node.status.state == pb.NODE_READY
    assert node.status.message.startswith("certificate renewal failing")
    assert not mark_ready_again(node, message=node.status.message)  # nothing to write
    assert mark_ready_again(node, message="") and node.status.message == ""


def test_a_node_that_reconnects_as_it_was_is_not_written_again() -> None:
    request = cluster_pb2.SessionRequest(addr="198.18.0.7")
    request.description.hostname = "w7"
    node = pb.Node(id="w7")
    assert session_opened(node, request=request)  # joined: Ready with its description
    assert node.status.state == pb.NODE_READY and node.description.hostname == "w7"
    assert not session_opened(node, request=request)  # the same again: nothing to write
    node.status.state = pb.NODE_DOWN
    assert session_opened(node, request=request)  # marked down meanwhile: back to Ready
    request.description.hostname = "w7-renamed"
    assert session_opened(node, request=request)
