"""The latest changes applied to this manager's store, kept for the API's event stream.

The store calls its watchers on the applying (Raft) thread and keeps no history; an events
client asks for changes since a time in the past (`docker events --since 1m`), so the last
CHANGES_KEPT are kept here, as dockerd keeps its last events in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from manager.store.memory import Event, MemoryStore

log = logging.getLogger(__name__)

# dockerd keeps its last 256 events (daemon/events: eventsLimit).
CHANGES_KEPT = 256
# The object kinds dockerd watches for its events (moby daemon/cluster/noderunner.go): task
# changes, by far the most frequent, would only push them out of what is kept.
WATCHED = frozenset({"node", "service", "network", "secret", "config"})


@dataclass(frozen=True)
class Change:
    event: Event
    applied_ns: int  # when this manager applied it: the time of a removal (no timestamp)


Subscriber = Callable[[list[Change]], None]


class ChangeLog:
    def __init__(self, store: MemoryStore, kept: int = CHANGES_KEPT) -> None:
        self._lock = threading.Lock()
        self._kept: deque[Change] = deque(maxlen=kept)
        self._subscribers: list[Subscriber] = []
        store.watch(self._on_events)

    def _on_events(self, events: list[Event]) -> None:  # on the applying thread
        now = time.time_ns()
        changes = [Change(e, now) for e in events if e.table in WATCHED]
        if not changes:
            return
        with self._lock:
            self._kept.extend(changes)
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(changes)
            except Exception:  # a reader's fault must never reach the store's apply
                log.exception("an event subscriber failed; it is dropped")
                self._drop(subscriber)

    def subscribe(self, subscriber: Subscriber) -> tuple[list[Change], Callable[[], None]]:
        """The changes kept so far, and from now on each applied batch to `subscriber` (on
        the applying thread): no change is missed or given twice. Returns (kept, cancel)."""
        with self._lock:
            kept = list(self._kept)
            self._subscribers.append(subscriber)
        return kept, lambda: self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)
