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
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

SLOW = 0.1  # seconds: a full collection this long freezes what survived it (and is logged)
THAW = 600.0  # seconds: how long frozen objects may hold cyclic garbage


class GcWatch:
    """A gc callback (gc.callbacks runs it on the collecting thread, before and after each
    collection, with the interpreter held)."""

    def __init__(self, slow: float = SLOW, thaw: float = THAW) -> None:
        self.slow, self.thaw = slow, thaw
        self._started = 0.0
        self._frozen_at = 0.0  # 0: nothing frozen by us

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
            return
        took = now - self._started
        if info["generation"] != 2:
            return
        if self._frozen_at and now - self._frozen_at >= self.thaw:
            gc.unfreeze()  # the next full collection walks everything once
            self._frozen_at = 0.0
        elif took >= self.slow:
            gc.freeze()
            self._frozen_at = self._frozen_at or now
        if took >= self.slow:
            log.warning("a full garbage collection held this process %.2f s (%d objects "
                        "collected; %d frozen)", took, info["collected"], gc.get_freeze_count())

    def install(self) -> None:
        gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        if self._frozen_at:
            gc.unfreeze()
            self._frozen_at = 0.0
