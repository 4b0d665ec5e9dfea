"""All orchestrators of a manager, sharing one snapshot of the store per leader tick.

They run on the Raft leader, in this order, every Manager leader tick (0.25 s) in which the
store changed or one of them asked to be woken (a restart delay, an update delay or monitor
period, a stop timeout ran out)."""

from __future__ import annotations

from manager.manager import Manager
from manager.orchestrator.controller import Controller
from manager.orchestrator.global_ import GlobalOrchestrator
from manager.orchestrator.jobs import JobsOrchestrator
from manager.orchestrator.reaper import TaskReaper
from manager.orchestrator.replicated import ReplicatedOrchestrator
from manager.orchestrator.restart import RestartSupervisor
from manager.orchestrator.snapshot import SnapshotCache
from manager.orchestrator.update import Updater


class Orchestrators:
    def __init__(self, manager: Manager) -> None:
        snapshots = SnapshotCache(manager.store)
        self.controllers: list[Controller] = [
            cls(manager, snapshots)
            for cls in (ReplicatedOrchestrator, GlobalOrchestrator, JobsOrchestrator,
                        RestartSupervisor, Updater, TaskReaper)
        ]

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()
