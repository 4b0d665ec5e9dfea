"""Python's garbage collector in a daemon with a large heap.

A full collection holds the interpreter (every thread: the event loop and Raft's tick thread
alike) while it walks every object it tracks, and CPython runs one each time that set grew by
a quarter. A leader taking 20,000 tasks on 2,000 nodes (bench/scale_sim.py, 3 managers) made
20 such walks of 0.1-0.7 s, 7.9 s in all: long enough for its followers' election timeout
(0.5 s) to run out, so the leadership moved during the burst.

So after a full collection that took SLOW or more, what survived it is frozen (moved to the
permanent generation, which no collection walks) and the next full collections walk only what
is newer. Cyclic garbage among frozen objects is not reclaimed while they stay frozen: every
THAW seconds they go back to the collector, and one whole walk reclaims it.

That one walk is as long as the heap is large: 6.7 s for a leader of 100,000 tasks, which
lost its leadership to it. A process for which a pause costs more (`may_pause` says no: a
Raft leader) thaws only when the walk is estimated at PAUSE or less, from the time per object
of its last slow collection; otherwise the thaw waits until a pause is affordable again (it
no longer leads), and the frozen cyclic garbage stays until then.

THRESHOLDS: the young generation is collected every 50,000 allocations instead of CPython's
700: each of those collections walks what survived since the last, and a daemon that makes
and drops protobuf messages by the thousand walked them over and over (applying a batch of
200 task updates: 24 µs a task with 700, 15 µs with 50,000, as with no collector at all).
The older generations follow every other young collection, so full collections still come
about as often as with CPython's (700, 10, 10), and each, with the freeze, walks only what
is newer. With (50,000, 10, 10) a full collection was due only every 5 million allocations:
a leader of 5,000 nodes made its first one in the middle of a burst, walked 1.9 million
objects for 2.66 s and lost its leadership (bench/README.md, eighth pass).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SLOW = 0.1  # seconds: a full collection this long freezes what survived it (and is logged)
THAW = 600.0  # seconds: how long frozen objects may hold cyclic garbage
PAUSE = 0.2  # seconds: the longest walk a process that may not pause thaws into
THRESHOLDS = (50_000, 1, 1)  # gc.set_threshold's: young, then older generations


def always() -> bool:
    return True


class GcWatch:
    """A gc callback (gc.callbacks runs it on the collecting thread, before and after each
    collection, with the interpreter held)."""

    def __init__(self, slow: float = SLOW, thaw: float = THAW, pause: float = PAUSE,
                 may_pause: Callable[[], bool] = always,
                 thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
        self.slow, self.thaw, self.pause, self.thresholds = slow, thaw, pause, thresholds
        self._thresholds: tuple[int, ...] = ()  # the collector's, before install()
        self.may_pause = may_pause  # read on the collecting thread: must be cheap and safe
        self._started = 0.0
        self._frozen_at = 0.0  # 0: nothing frozen by us
        self._frozen = 0  # objects frozen by us, as of the last freeze
        self._per_object = 0.0  # seconds the last slow full collection took per object
        self._deferred = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
            return
        took = now - self._started
        if info["generation"] != 2:
            return
        if self._frozen_at and now - self._frozen_at >= self.thaw and self._may_thaw():
            gc.unfreeze()  # the next full collection walks everything once
            self._frozen_at, self._frozen, self._deferred = 0.0, 0, False
        elif took >= self.slow:
            self._freeze(took, info["collected"], now)
        if took >= self.slow:
            log.warning("a full garbage collection held this process %.2f s (%d objects "
                        "collected; %d frozen)", took, info["collected"], self._frozen)

    def _freeze(self, took: float, collected: int, now: float) -> None:
        before = self._frozen
        gc.freeze()
        self._frozen = gc.get_freeze_count()
        self._per_object = took / max(1, self._frozen - before + collected)
        self._frozen_at = self._frozen_at or now

    def _may_thaw(self) -> bool:
        walk = self._per_object * self._frozen
        if walk <= self.pause or self.may_pause():
            return True
        if not self._deferred:
            self._deferred = True
            log.warning("the garbage collector's thaw waits: walking the %d frozen objects "
                        "would hold this process about %.1f s, more than it may pause now",
                        self._frozen, walk)
        return False

    def install(self) -> None:
        self._thresholds = gc.get_threshold()
        gc.set_threshold(*self.thresholds)
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        if self._thresholds:
            gc.set_threshold(*self._thresholds)
            self._thresholds = ()
        if self._frozen_at:
            gc.unfreeze()
            self._frozen_at, self._frozen = 0.0, 0
