"""The API's reads take turns on the manager's event loop (shoal/api/fairness.py): however
many clients list at once, only a few list handlers run between two turns of the loop, so
what else waits on the loop (gRPC's heartbeats, the controllers) gets its turns."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proto import objects_pb2 as pb
from shoal.api import fairness, listing, nodes, secrets, services, swarm, tasks
from shoal.api import networks as network_routes
from shoal.api.server import make_app
from tests.unit.test_service_control import Api, FakeNode, task

CLIENTS = 30
REQUESTS_EACH = 10


def counting(ran: list[int]) -> web.middleware:  # type: ignore[valid-type]
    """Innermost: counts the list handlers that ran (the test's own instrument)."""
    @web.middleware
    async def count(request: web.Request, handler: fairness.Handler) -> web.StreamResponse:
        if fairness.gated(request):
            ran[0] += 1
        return await handler(request)
    return count


async def most_per_turn(app: web.Application, ran: list[int]) -> int:
    """CLIENTS clients on kept connections each list services REQUESTS_EACH times, while a
    probe turns with the loop; the most list handlers that ran between two of its turns."""
    server = TestServer(app)
    await server.start_server()
    done = False
    most = 0

    async def probe() -> None:
        nonlocal most
        seen = ran[0]
        while not done:
            await asyncio.sleep(0)  # exactly one turn of the loop
            most = max(most, ran[0] - seen)
            seen = ran[0]

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in range(REQUESTS_EACH):
            async with session.get(server.make_url("/v1.44/services"),
                                   params={"status": "true"}) as resp:
                assert resp.status == 200
                await resp.read()

    watching = asyncio.create_task(probe())
    try:
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    finally:
        done = True
        await watching
        await server.close()
    assert ran[0] == CLIENTS * REQUESTS_EACH
    return most


def app_with(gate: bool) -> tuple[web.Application, list[int]]:
    app = make_app(FakeNode())  # type: ignore[arg-type]
    ran = [0]
    if not gate:  # the same app without its gate: what the loop had before
        app.middlewares[:] = [m for m in app.middlewares
                              if getattr(m, "__name__", "") != "take_turns"]
    app.middlewares.append(counting(ran))
    return app, ran


async def test_list_requests_take_turns_with_the_rest_of_the_loop() -> None:
    ungated = await most_per_turn(*app_with(False))
    gated = await most_per_turn(*app_with(True))
    # Without the gate the clients' requests all run in the turn after they arrive (30 of
    # 30 here); with it no more than the gate's slots between two turns.
    assert ungated > 2 * fairness.READS_AT_ONCE, ungated
    assert gated <= fairness.READS_AT_ONCE, gated


def test_every_gated_route_is_a_read_the_api_serves() -> None:
    served = {(method, path) for method, path, _ in
              [*services.ROUTES, *tasks.ROUTES, *nodes.ROUTES, *network_routes.ROUTES,
               *secrets.ROUTES, *swarm.ROUTES]}
    assert fairness.GATED <= served, fairness.GATED - served
    assert all(method == "GET" for method, _ in fairness.GATED)


async def test_a_long_list_lets_the_loop_turn_while_it_converts() -> None:
    """Two and a half chunks of tasks: the loop turns between chunks of the conversion (at
    least twice), and the answer is the whole list, once converted and once from the
    caches."""
    count = 2 * listing.CHUNK + listing.CHUNK // 2
    node = FakeNode()
    app = make_app(node)  # type: ignore[arg-type]
    turns = [0]
    inside: list[int] = []

    @web.middleware
    async def turns_inside(request: web.Request,
                           handler: fairness.Handler) -> web.StreamResponse:
        before = turns[0]
        response = await handler(request)
        inside.append(turns[0] - before)
        return response

    app.middlewares.append(turns_inside)
    client = TestClient(TestServer(app))
    await client.start_server()
    done = False

    async def probe() -> None:
        while not done:
            await asyncio.sleep(0)
            turns[0] += 1

    watching = asyncio.create_task(probe())
    try:
        api = Api(client, node.mgr)
        await api.create(replicas=count)
        svc = api.service("web")
        node.mgr.put(*(task(f"t{i:05d}", svc, i, "n1", pb.RUNNING) for i in range(count)))
        inside.clear()
        for _ in range(2):
            resp = await client.get("/v1.44/tasks")
            assert resp.status == 200
            assert len(await resp.json()) == count
    finally:
        done = True
        await watching
        await client.close()
    assert len(inside) == 2 and all(n >= 2 for n in inside), inside
