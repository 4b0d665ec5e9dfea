"""The shape of a leader controller that works in passes: store events mark it dirty (on the
Raft thread: only a flag), and the leader tick runs a pass when it is dirty, after a leader
change, or every `rescan` seconds regardless."""

from __future__ import annotations

import abc
import time
from typing import Any

from manager.manager import Manager
from manager.store.memory import Event


class PassController(abc.ABC):
    rescan = 10.0

    def __init__(self, manager: Manager) -> None:
        self.mgr = manager
        self._dirty = True
        self._last_pass = 0.0
        manager.store.watch(self._on_events)
        manager.on_leader_tick(self.tick)

    def relevant(self, event: Event) -> bool:
        return True

    def _on_events(self, events: list[Event]) -> None:
        if not self._dirty and any(self.relevant(e) for e in events):
            self._dirty = True

    async def tick(self, became_leader: bool) -> None:
        now = time.monotonic()
        if not (self._dirty or became_leader or now - self._last_pass > self.rescan):
            return
        self._dirty = False
        self._last_pass = now
        await self.run_once()

    @abc.abstractmethod
    async def run_once(self) -> Any:
        """One pass over the store."""
