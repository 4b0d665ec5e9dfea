"""The API's share of a manager's event loop.

One event loop serves the API, gRPC (the nodes' heartbeats and status reports) and the
controllers. grpc.aio takes in one new call per turn or two of the loop, and a turn runs
every callback that is ready: 50 clients looping over `GET /services` put up to 50 list
handlers (each about 1 ms of Python at 2,000 tasks, none of them waiting on anything) into
every turn, the loop turned a dozen times a second, and heartbeats queued in gRPC until
they timed out (bench/api_load.py: 126 of 200 live nodes marked Down). So the reads that
only compute from the store take turns: at most READS_AT_ONCE hold a slot, each lets the
loop turn once before it runs, and the others wait for a slot, in order, outside the loop's
ready queue. The longest of them, listing every task or node, also let the loop turn
between chunks of their conversion (listing.parts_in_turns), holding their slot. Writes,
streams (logs, events) and what is forwarded to the engine wait on I/O, not on the loop,
and are not gated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shoal.api.metrics import route_pattern

READS_AT_ONCE = 2

# (method, route pattern without the /vX.Y prefix): the handlers that read the store and
# answer without waiting on anything.
GATED = frozenset({
    ("GET", "/services"), ("GET", "/services/{ref}"),
    ("GET", "/tasks"), ("GET", "/tasks/{task_id}"),
    ("GET", "/nodes"), ("GET", "/nodes/{node_id}"),
    ("GET", "/networks"), ("GET", "/networks/{ref}"),
    ("GET", "/secrets"), ("GET", "/secrets/{ref}"),
    ("GET", "/configs"), ("GET", "/configs/{ref}"),
    ("GET", "/swarm"),
})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReadGate:
    """At most `at_once` gated reads in progress; the rest wait their turn."""

    def __init__(self, at_once: int = READS_AT_ONCE) -> None:
        self._slots = asyncio.Semaphore(at_once)

    async def run(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        async with self._slots:
            # The handler runs without yielding: holding the slot across one turn is what
            # makes the reads that arrive meanwhile queue here instead of all running in
            # the next turn.
            await asyncio.sleep(0)
            return await handler(request)


def gated(request: web.Request) -> bool:
    return (request.method, route_pattern(request)) in GATED


def gate_middleware(gate: ReadGate) -> Any:
    @web.middleware
    async def take_turns(request: web.Request, handler: Handler) -> web.StreamResponse:
        if gated(request):
            return await gate.run(request, handler)
        return await handler(request)

    return take_turns
