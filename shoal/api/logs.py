"""GET /services/{id}/logs and /tasks/{id}/logs, in Docker's stream format."""

from __future__ import annotations

import struct
import urllib.parse

from aiohttp import web

from manager.controlapi.lookup import resolve
from manager.controlapi.services import ServiceControl
from manager.errors import InvalidArgument
from proto import cluster_pb2
from proto import objects_pb2 as pb
from shoal import logs
from shoal.api.context import manager_of, node_of
from shoal.api.convert import timestamp
from shoal.api.request import bool_param


def options_from(query: dict[str, str]) -> cluster_pb2.LogOptions:
    tail = query.get("tail", "all") or "all"
    if tail != "all" and not tail.lstrip("-").isdigit():
        raise InvalidArgument(f"invalid tail {tail!r}: a number of lines or \"all\"")
    since = query.get("since", "0") or "0"
    try:
        since_ns = int(float(since) * 1e9)
    except ValueError as err:
        raise InvalidArgument(f"invalid since {since!r}: a UNIX timestamp") from err
    return cluster_pb2.LogOptions(follow=bool_param(query.get("follow")),
                                  tail=-1 if tail == "all" else int(tail),
                                  timestamps=bool_param(query.get("timestamps")),
                                  since_ns=since_ns)


def details(msg: cluster_pb2.LogMessage) -> str:
    pairs = {"com.docker.swarm.node.id": msg.node_id,
             "com.docker.swarm.service.id": msg.service_id,
             "com.docker.swarm.task.id": msg.task_id}
    return ",".join(f"{k}={urllib.parse.quote(v)}" for k, v in sorted(pairs.items()))


def render(msg: cluster_pb2.LogMessage, opts: cluster_pb2.LogOptions, with_details: bool,
           tty: bool) -> bytes:
    prefix = ""
    if opts.timestamps:
        prefix += timestamp(msg.timestamp_ns) + " "
    if with_details:
        prefix += details(msg) + " "
    data = prefix.encode() + msg.data
    if not data.endswith(b"\n"):
        data += b"\n"
    if tty:
        return data
    return struct.pack(">BxxxL", msg.stream or 1, len(data)) + data


async def _stream(request: web.Request, selector: cluster_pb2.LogSelector,
                  tty: bool) -> web.StreamResponse:
    node = node_of(request)
    opts = options_from(dict(request.query))
    want = {1: bool_param(request.query.get("stdout")), 2: bool_param(request.query.get("stderr"))}
    if not any(want.values()):
        raise InvalidArgument("you must choose at least one stream (stdout=1 and/or stderr=1)")
    with_details = bool_param(request.query.get("details"))
    batches = logs.subscribe(node, selector, opts)
    first = await anext(batches, None)  # errors (unknown task, no leader) become HTTP errors
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.docker.raw-stream"
                                           if tty else
                                           "application/vnd.docker.multiplexed-stream"})
    await response.prepare(request)
    batch = first
    while batch is not None:
        for msg in batch:
            if want.get(msg.stream or 1):
                await response.write(render(msg, opts, with_details, tty))
        batch = await anext(batches, None)
    await response.write_eof()
    return response


async def service_logs(request: web.Request) -> web.StreamResponse:
    service = ServiceControl(manager_of(request).store).get(request.match_info["service_id"])
    return await _stream(request, cluster_pb2.LogSelector(service_ids=[service.id]),
                         service.spec.task.container.tty)


async def task_logs(request: web.Request) -> web.StreamResponse:
    mgr = manager_of(request)
    task = resolve(mgr.store.list_view(pb.Task), request.match_info["task_id"], "task")
    return await _stream(request, cluster_pb2.LogSelector(task_ids=[task.id]),
                         task.spec.container.tty)


ROUTES = [
    ("GET", "/services/{service_id}/logs", service_logs),
    ("GET", "/tasks/{task_id}/logs", task_logs),
]
