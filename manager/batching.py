"""Writing many version-checked updates through Raft: batches of at most BATCH_SIZE actions
(all or nothing each), several in flight. A batch that loses a version race is retried once
with the objects that did not change since they were read; the others are left for the
caller's next pass."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from manager.errors import ManagerError, OutOfSequence
from manager.manager import Manager
from proto import store_pb2

log = logging.getLogger(__name__)

BATCH_SIZE = 200
IN_FLIGHT = 8


async def write_updates(mgr: Manager, objs: Sequence[Any], batch_size: int = BATCH_SIZE,
                        in_flight: int = IN_FLIGHT) -> bool:
    """UPDATE each object (its meta.version is the one it was read at). True if all were
    written; False if some were not (changed meanwhile, or no quorum)."""
    limit = asyncio.Semaphore(in_flight)

    async def one(chunk: Sequence[Any]) -> bool:
        async with limit:
            return await _write_chunk(mgr, chunk)

    results = await asyncio.gather(*(one(objs[i:i + batch_size])
                                     for i in range(0, len(objs), batch_size)))
    return all(results)


async def _write_chunk(mgr: Manager, chunk: Sequence[Any]) -> bool:
    for attempt in range(2):
        try:
            await mgr.write(*[(store_pb2.UPDATE, o) for o in chunk])
            return attempt == 0
        except OutOfSequence:
            if attempt:
                return False
            chunk = [o for o in chunk if _unchanged(mgr, o)]
            if not chunk:
                return False
        except ManagerError as err:
            log.warning("writing %d objects failed: %s", len(chunk), err)
            return False
    return False


def _unchanged(mgr: Manager, obj: Any) -> bool:
    current = mgr.store.get(type(obj), obj.id)
    return current is not None and current.meta.version.index == obj.meta.version.index
