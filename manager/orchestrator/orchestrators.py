"""All orchestrators of a manager, in the order the leader runtime starts them. Each runs its
own passes (manager/runtime.py) when the store changed or it asked to be woken (a restart
delay, an update delay or monitor period, a stop timeout ran out)."""

from __future__ import annotations

from manager.manager import Manager
from manager.orchestrator.controller import Orchestrator
from manager.orchestrator.global_ import GlobalOrchestrator
from manager.orchestrator.jobs import JobsOrchestrator
from manager.orchestrator.reaper import TaskReaper
from manager.orchestrator.replicated import ReplicatedOrchestrator
from manager.orchestrator.restart import RestartSupervisor
from manager.orchestrator.snapshot import SnapshotCache
from manager.orchestrator.update import Updater

ORCHESTRATORS: tuple[type[Orchestrator], ...] = (
    ReplicatedOrchestrator, GlobalOrchestrator, JobsOrchestrator, RestartSupervisor, Updater,
    TaskReaper)


def orchestrators(manager: Manager) -> list[Orchestrator]:
    snapshots = SnapshotCache()  # one per view for all of them
    return [cls(manager, snapshots) for cls in ORCHESTRATORS]
