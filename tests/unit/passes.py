"""Drives a leader controller pass by pass the way manager/runtime.py does, without its
timers: a pass runs when a relevant store event arrived since the last one, when the wake-up
the last pass asked for is due, or at the start of a term."""

from __future__ import annotations

import time

from manager.manager import Manager
from manager.runtime import Controller
from manager.store.memory import Event
from proto import store_pb2


def lead(mgr: Manager) -> None:
    """Make `mgr` the leader of a new epoch, as `open_term` would (fakes have no Raft)."""
    epoch = mgr.store.epoch + 1
    result = mgr.store.apply(store_pb2.StoreBatch(new_epoch=epoch, timestamp_ns=time.time_ns()))
    assert result.error is None
    mgr.epoch = epoch


class Passes:
    def __init__(self, mgr: Manager, controller: Controller) -> None:
        self.mgr = mgr
        self.controller = controller
        self.dirty = True
        self.wake_at: float | None = None
        self.runs = 0
        mgr.store.watch(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        if sum(self.controller.relevant(e) for e in events):  # each marks what changed
            self.dirty = True

    async def step(self, begin: bool = False) -> bool:
        """One turn: True if a pass ran."""
        if begin:
            if not self.mgr.epoch:
                lead(self.mgr)
            self.controller.begin()
            self.dirty = True
        due = self.wake_at is not None and time.monotonic() >= self.wake_at
        if not (self.dirty or due):
            return False
        self.dirty = False
        self.runs += 1
        wait = await self.controller.run(self.mgr.view())
        self.wake_at = None if wait is None else time.monotonic() + wait
        return True
