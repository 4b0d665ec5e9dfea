"""shoal/gcwatch.py: a slow full collection freezes its survivors, so the next walks only what
is newer; frozen cyclic garbage is reclaimed once thawed."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator

import pytest

from shoal.gcwatch import GcWatch


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
