"""The fault tests' history checker: its pure rules on hand-made histories and views."""

from __future__ import annotations

from typing import Any

from shoal.client import APIError, ConnectionFailed
from tests.system.history import CREATE, FAIL, LABEL, OK, UNKNOWN, History, Op, Read, classify
from tests.system.invariants import (
    View,
    cut_side_problems,
    disagreement,
    duplicate_names,
    duplicate_slots,
    engine_duplicates,
    lost_writes,
    nodes_not_ready,
    phantom_reads,
    phantom_writes,
)
from tests.system.netfault import ruleset


def op(kind: str, target: str, value: int, outcome: str, start: float = 0.0,
       end: float = 0.1, status: int = 0, manager: str = "m1") -> Op:
    return Op(kind, manager, target, value, start, end, outcome, status)


def history(*ops: Op) -> History:
    h = History()
    for o in ops:
        h.record(o)
    return h


def service(sid: str, name: str, labels: dict[str, str] | None = None,
            version: int = 1) -> dict[str, Any]:
    return {"ID": sid, "Version": {"Index": version},
            "Spec": {"Name": name, "Labels": labels or {}}}


def task(tid: str, slot: int, state: str = "running", desired: str = "running",
         node: str = "n1", svc: str = "s1") -> dict[str, Any]:
    return {"ID": tid, "ServiceID": svc, "Slot": slot, "NodeID": node,
            "DesiredState": desired, "Status": {"State": state}}


def view(services: list[dict[str, Any]] = (), tasks: list[dict[str, Any]] = (),  # type: ignore[assignment]
         nodes: list[dict[str, Any]] = (), host: str = "m1") -> View:  # type: ignore[assignment]
    return View(host, list(services), list(nodes), list(tasks))


def test_acked_create_missing_and_counter_below_acked_value_are_lost() -> None:
    h = history(op(CREATE, "a", 1, OK), op(CREATE, "b", 3, UNKNOWN),
                op(LABEL, "ctr.m1", 2, OK), op(LABEL, "ctr.m1", 4, OK))
    v = view([service("c", "ctr", {"ctr.m1": "2"})])
    lost = lost_writes(v, h, "c")
    assert len(lost) == 2 and "acked create a=1" in lost[0] and "ctr.m1=2" in lost[1]
    v = view([service("c", "ctr", {"ctr.m1": "4"}), service("x", "a")])
    assert lost_writes(v, h, "c") == []


def test_failed_write_present_or_read_is_a_phantom() -> None:
    h = history(op(CREATE, "a", 1, FAIL, status=503), op(LABEL, "ctr.m1", 2, FAIL, status=409))
    assert phantom_writes(view([service("c", "ctr")]), h, "c") == []
    found = phantom_writes(view([service("c", "ctr", {"ctr.m1": "2"}), service("x", "a")]),
                           h, "c")
    assert len(found) == 2
    h.record(Read("m2", 1.0, 7, {"ctr.m1": "2"}))
    assert len(phantom_reads(h)) == 1


def test_a_name_raced_by_two_clients_may_exist_once_not_twice() -> None:
    h = history(op(CREATE, "same", 0, OK, manager="m1"),
                op(CREATE, "same", 0, FAIL, status=409, manager="m2"))
    once = view([service("x", "same")])
    twice = view([service("x", "same"), service("y", "same")])
    assert phantom_writes(once, h, "") == [] and duplicate_names(once) == []
    assert len(phantom_writes(twice, h, "")) == 1 and len(duplicate_names(twice)) == 1


def test_two_live_tasks_in_one_slot() -> None:
    ok = view(tasks=[task("t1", 1), task("t2", 1, state="shutdown", desired="shutdown"),
                     task("t3", 1, state="running", desired="shutdown"), task("t4", 2)])
    assert duplicate_slots(ok) == []
    bad = view(tasks=[task("t1", 1), task("t2", 1, state="assigned")])
    assert len(duplicate_slots(bad)) == 1
    containers = [{"Id": "c1", "Labels": {"com.docker.swarm.task.id": "t1"}},
                  {"Id": "c3", "Labels": {"com.docker.swarm.task.id": "t3"}}]
    assert len(engine_duplicates(containers, ok)) == 1  # t3 shuts down but still runs


def test_live_node_down_and_managers_disagreeing() -> None:
    nodes = [{"ID": "n1", "Description": {"Hostname": "w1"}, "Status": {"State": "down"},
              "Spec": {"Role": "worker", "Availability": "active"}}]
    assert nodes_not_ready(view(nodes=nodes), {"w1"}) == [
        "m1: node w1 is down while its shoald runs"]
    a = view([service("s", "web", version=3)], host="m1")
    b = view([service("s", "web", version=4)], host="m2")
    assert disagreement([a, a]) == [] and len(disagreement([a, b])) == 1


def test_outcome_of_a_write_without_an_answer() -> None:
    refused = ConnectionFailed("unix:///x", "refused")
    refused.__cause__ = ConnectionRefusedError()
    timed_out = ConnectionFailed("unix:///x", "timed out")
    timed_out.__cause__ = TimeoutError()
    assert classify(refused)[0] == FAIL and classify(timed_out)[0] == UNKNOWN
    assert classify(APIError(503, "no leader"))[:2] == (FAIL, 503)


def test_cut_side_writes_must_fail_fast_with_503() -> None:
    cut, healed = 100.0, 120.0
    good = [op(CREATE, "a", 1, FAIL, 106.0, 106.1, 503), op(CREATE, "b", 2, OK, 95.0, 99.0)]
    assert cut_side_problems(good, cut, healed) == []
    hung = op(LABEL, "ctr.m1", 2, UNKNOWN, 100.2, 115.2)
    acked = op(CREATE, "c", 3, OK, 101.0, 101.5, 200)
    wrong = op(CREATE, "d", 5, FAIL, 110.0, 110.2, 409)
    found = cut_side_problems([hung, acked, wrong], cut, healed)
    assert [p.split(":")[0] for p in found] == [
        "no answer 1.0 s after detection (took 15.00 s)", "acknowledged while cut off",
        "answered 409, not 503"]


def test_cut_ruleset_drops_both_ways() -> None:
    text = ruleset("shoal_cut_x", ["198.18.0.3", "198.18.0.4"])
    assert "table inet shoal_cut_x" in text
    assert "ip saddr { 198.18.0.3, 198.18.0.4 } drop" in text
    assert "ip daddr { 198.18.0.3, 198.18.0.4 } drop" in text
