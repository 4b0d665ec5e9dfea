"""The global orchestrator: one task per eligible node (its "slot" is the node).

A node keeps its task while it exists, is not down or drained and meets the service's
placement constraints; it gets a new one only if it is also READY and ACTIVE (a paused node
keeps what it runs but takes nothing new). Each pass, per global service:
- live tasks on nodes that are no longer eligible are shut down (desired SHUTDOWN), not
  replaced;
- an eligible node with no task holding it gets a new task with `node_id` preset (the
  scheduler still checks resources and moves it to ASSIGNED) — unless the node's previous task
  is still stopping (stop-first update), in which case the node waits for it.
The global-job orchestrator (jobs.py) shares `eligible`.
"""

from __future__ import annotations

from manager.orchestrator.controller import Orchestrator
from manager.orchestrator.snapshot import (
    Decision,
    Snapshot,
    create,
    for_each_service,
    satisfies,
    stop_deadline,
    update,
)
from manager.orchestrator.tasks import (
    by_slot,
    duplicates,
    holds_slot,
    mode,
    new_task,
    with_desired,
)
from proto import objects_pb2 as pb


def keeps(service: pb.Service, node_id: str, snap: Snapshot) -> bool:
    """The node may keep running the service's task."""
    if not node_id or snap.node_lost(node_id):
        return False
    return satisfies(snap.nodes[node_id], service.spec.task)


def takes_new(node: pb.Node) -> bool:
    return node.status.state == pb.NODE_READY and node.spec.availability == pb.ACTIVE


def eligible(service: pb.Service, snap: Snapshot) -> list[str]:
    """Nodes that should get a task of the service if they hold none (sorted)."""
    return sorted(n.id for n in snap.nodes.values()
                  if takes_new(n) and keeps(service, n.id, snap))


def decide_service(service: pb.Service, tasks: list[pb.Task], snap: Snapshot) -> Decision:
    decision = Decision()
    if service.pending_delete or mode(service) != "global":
        return decision
    slots = by_slot(service, tasks)
    for node_id, node_tasks in sorted(slots.items(), key=lambda kv: str(kv[0])):
        assert isinstance(node_id, str)
        if not keeps(service, node_id, snap):
            decision.add(*[update(with_desired(t, pb.SHUTDOWN))
                           for t in node_tasks if holds_slot(t)])
        else:
            decision.add(*[update(with_desired(t, pb.SHUTDOWN))
                           for t in duplicates(node_tasks)])
    for node_id in eligible(service, snap):
        node_tasks = slots.get(node_id, [])
        if any(holds_slot(t) for t in node_tasks):
            continue
        stopping = [t for t in node_tasks if snap.stopping(t)]
        if stopping:
            decision.wake(min(stop_deadline(t) for t in stopping))
            continue
        decision.add(create(new_task(service, snap.now_ns, node_id=node_id)))
    return decision


def decide(snap: Snapshot) -> Decision:
    return for_each_service(snap, decide_service)


class GlobalOrchestrator(Orchestrator):
    name = "global orchestrator"
    core = staticmethod(decide_service)
    modes = ("global",)
