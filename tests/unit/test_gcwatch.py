"""shoal/gcwatch.py: a slow full collection freezes its survivors, so the next walks only what
is newer; frozen cyclic garbage is reclaimed once thawed."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator

import pytest

from shoal.gcwatch import THRESHOLDS, GcWatch


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def watch() -> Iterator[GcWatch]:
    w = GcWatch(slow=0.0, thaw=3600.0)  # every full collection counts as slow
    w.install()
    try:
        yield w
    finally:
        w.remove()
        assert gc.get_freeze_count() == 0


def test_the_next_full_collection_walks_only_what_is_newer(
        watch: GcWatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.gcwatch")
    heap = [[i] for i in range(100_000)]  # a large store's worth of tracked objects
    gc.collect()
    assert gc.get_freeze_count() >= len(heap)
    walked = {id(o) for o in gc.get_objects()}  # what a collection walks now
    assert not any(id(o) in walked for o in heap)
    newer = [[i] for i in range(10)]
    walked = {id(o) for o in gc.get_objects()}
    assert all(id(o) in walked for o in newer)
    assert "a full garbage collection held this process" in caplog.text


def test_frozen_cyclic_garbage_is_reclaimed_after_the_thaw(watch: GcWatch) -> None:
    alive = Cycle()
    gone = weakref.ref(alive)
    gc.collect()  # frozen while alive
    del alive
    gc.collect()
    assert gone() is not None  # garbage, but frozen: not walked
    watch.thaw = 0.0
    gc.collect()  # the thaw: back to the collector
    gc.collect()
    assert gone() is None


def frozen_cycle(watch: GcWatch) -> weakref.ref[Cycle]:
    """A cycle frozen while alive and garbage since; the thaw now due."""
    heap = [[i] for i in range(100_000)]  # enough objects that the walk has a cost
    alive = Cycle()
    gone = weakref.ref(alive)
    gc.collect()  # frozen while alive, with the heap
    del alive, heap
    gc.collect()
    assert gone() is not None
    watch.thaw = 0.0
    return gone


def test_a_process_that_may_not_pause_keeps_its_frozen_objects_while_the_walk_is_long(
        watch: GcWatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.gcwatch")
    leading = True
    watch.may_pause = lambda: not leading
    watch.pause = 0.0  # any walk is too long for a leader
    gone = frozen_cycle(watch)
    gc.collect()  # the thaw is due, but this process leads
    gc.collect()
    assert gone() is not None
    assert gc.get_freeze_count() > 0
    assert "the garbage collector's thaw waits" in caplog.text
    leading = False  # it no longer leads: the thaw goes ahead
    gc.collect()
    gc.collect()
    assert gone() is None


def test_a_process_that_may_not_pause_still_thaws_into_a_short_walk(watch: GcWatch) -> None:
    watch.may_pause = lambda: False
    watch.pause = 60.0  # a minute: the walk of this small heap is far shorter
    gone = frozen_cycle(watch)
    gc.collect()
    gc.collect()
    assert gone() is None


def test_full_collections_keep_their_pace_while_young_ones_are_rarer() -> None:
    """The daemon's thresholds collect the young generation far less often than CPython's,
    but a growing heap still gets full collections as often (each walking only what is
    newer, once frozen): with (50,000, 10, 10) this heap got none, and a leader's first came
    at 1.9 million objects, a 2.66 s pause."""
    before = gc.get_threshold()
    fulls = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            fulls.append(1)

    w = GcWatch()
    w.install()
    gc.callbacks.append(count)
    try:
        assert gc.get_threshold() == THRESHOLDS and THRESHOLDS[0] >= 50 * before[0]
        gc.collect()  # a full collection is due once the heap grew by a quarter since
        size = max(300_000, len(gc.get_objects()))
        heap = [[i, {"i": i}] for i in range(size)]  # the tracked heap three times over
        assert len(fulls) >= 2, fulls
        del heap
    finally:
        gc.callbacks.remove(count)
        w.remove()
    assert gc.get_threshold() == before
