"""The role manager's passes look only at the managers and the nodes whose role is to
change, after a first pass over every node; promotions and the leader flag still follow."""

from __future__ import annotations

from manager.manager import Manager
from manager.roles import RoleController
from manager.store.memory import StoreView
from proto import objects_pb2 as pb
from tests.unit.orchestration_world import node
from tests.unit.passes import Passes
from tests.unit.test_orchestrator_controller import FakeReplica, make_manager


class RaftOf(FakeReplica):
    """One member, r1, the leader, connected to itself."""

    self_addr = "r1"

    def leader_addr(self) -> str:
        return "r1"

    def is_connected(self, addr: str) -> bool:
        return addr == "r1"

    def members(self) -> list[str]:
        return ["r1"]


class Looking(RoleController):
    def __init__(self, mgr: Manager) -> None:
        super().__init__(mgr)
        self.looked: list[list[str]] = []

    def concerned(self, view: StoreView, marked: set[str] | None) -> list[pb.Node]:
        nodes = super().concerned(view, marked)
        self.looked.append(sorted(str(n.id) for n in nodes))
        return nodes


def manager_node() -> pb.Node:
    m = node("m1")
    m.role = pb.MANAGER
    m.spec.desired_role = pb.MANAGER
    m.manager_status.raft_addr = "r1"
    return m


async def test_passes_look_at_managers_and_role_changes_only() -> None:
    mgr, _ = make_manager(manager_node(), *[node(f"w{i}") for i in range(50)])
    mgr.replica = RaftOf(mgr.store)  # type: ignore[assignment]
    ctl = Looking(mgr)
    passes = Passes(mgr, ctl)
    await passes.step(True)
    assert ctl.looked == [["m1"]]  # every node read, the manager kept
    m1 = mgr.store.get(pb.Node, "m1")
    assert m1.manager_status.leader and m1.manager_status.reachability == pb.REACHABLE
    await mgr.modify(pb.Node, "w7", lambda n: setattr(n.spec, "desired_role", pb.MANAGER)
                     or True)
    passes.dirty = True
    await passes.step()
    assert ctl.looked[-1] == ["m1", "w7"]
    assert mgr.store.get(pb.Node, "w7").role == pb.MANAGER  # promoted
    await mgr.modify(pb.Node, "w3", lambda n: n.spec.annotations.labels.update(a="b") or True)
    passes.dirty = True
    await passes.step()  # a worker's own change: not looked at
    assert ctl.looked[-1] == ["m1", "w7"]
    await passes.step(True)  # a new term looks at every node again
    assert ctl.looked[-1] == ["m1", "w7"]
