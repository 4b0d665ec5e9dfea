"""The agent: keeps a session with the leader's dispatcher and heartbeats over it.

While a session is up it also follows the node's Assignments stream, hands each set to the
worker, and lends the worker's reporter a sender of UpdateTaskStatus on this session.

It tries the managers it knows, follows a follower's hint to the leader, and backs off
between attempts (100 ms doubling to 8 s, like swarmkit). Every SessionMessage is handed to
the node, which reacts to role changes and new manager lists.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb
from worker.logs import publish_logs
from worker.worker import Worker

log = logging.getLogger(__name__)

_LEADER_HINT = re.compile(r"leader=(\S+)")

# A heartbeat the leader left unanswered past its deadline, or dropped after it waited 30 s
# in gRPC's queue (CANCELLED), is a busy leader while the connection is up (keepalive pings,
# pki/grpc_tls.py, close it when the leader is paused, cut off or gone): the next heartbeat
# goes on the same session. Reopening it instead made the busy leader open a new session,
# write the node and send its tasks again, and 2,000 nodes doing so kept it overloaded.
# Only this many periods with no answer at all make the node reopen (a leader whose event
# loop hangs while its connection stays up).
_BUSY = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
GIVE_UP_PERIODS = 12
RETRY_PAUSE = 1.0  # seconds before that next heartbeat (a CANCELLED can come at once)
# A status send a busy leader has not taken in yet is waited for, not sent again (10 s made
# 5,000 nodes send theirs again and again into the leader's queue); a dead leader fails it
# through the keepalive pings.
STATUS_TIMEOUT = 60.0


def keeps_session(code: grpc.StatusCode, unanswered: float, period: float) -> bool:
    """Whether a failed heartbeat leaves the session open (`unanswered`: seconds since the
    last answer, or since the session opened)."""
    return code in _BUSY and unanswered < GIVE_UP_PERIODS * period


@dataclass
class AgentConfig:
    addr: str  # this node's advertise address
    credentials: Callable[[], grpc.ChannelCredentials]
    channel_options: list[tuple[str, object]]
    description: Callable[[], pb.NodeDescription]
    on_message: Callable[[cluster_pb2.SessionMessage], Awaitable[None]]
    worker: Worker | None = None
    # Problems of this node to report in heartbeats (shown by `node inspect`).
    problems: Callable[[], str] = lambda: ""
    # What the node's data plane reports in each heartbeat: WireGuard public key, tunnel
    # error, key age and, when it changed, the network report (fields of HeartbeatRequest).
    network: Callable[[cluster_pb2.HeartbeatRequest], None] = lambda _: None


class Agent:
    def __init__(self, config: AgentConfig, managers: list[str]) -> None:
        self.config = config
        self.managers = list(managers)
        self.connected_to: str | None = None
        self._hint: str | None = None
        self._beat = asyncio.Event()  # set: send the next heartbeat now, not after the period
        # The last heartbeat the leader answered: when (monotonic) and how long it took
        # (shoal_agent_heartbeat_* metrics).
        self.last_heartbeat: float | None = None
        self.heartbeat_rtt = 0.0

    async def run(self) -> None:
        backoff = 0.1
        while True:
            addr = self._next_manager()
            try:
                await self._session(addr)
                backoff = 0.1
            except grpc.aio.AioRpcError as err:
                self._note_failure(addr, err)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the agent itself is stopping
                # Our own helpers cancelled the session call (a failed heartbeat or
                # assignments stream): that ends this session, not the agent.
                log.info("session with %s ended; reconnecting", addr)
            except Exception:
                log.exception("session with %s failed", addr)
            self.connected_to = None
            if self._hint:
                continue  # go straight to the leader we were told about
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, 8.0)

    def beat_now(self) -> None:
        """Send a heartbeat now (what it reports changed and the manager must know soon)."""
        self._beat.set()

    def _heartbeat_request(self, session_id: str, timeout: float
                           ) -> cluster_pb2.HeartbeatRequest:
        """The next heartbeat, to be sent with `timeout`; it carries the timeout so that the
        leader can tell how long the call waited in its queue."""
        request = cluster_pb2.HeartbeatRequest(session_id=session_id,
                                               status_message=self.config.problems(),
                                               timeout_ns=int(timeout * 1e9))
        self.config.network(request)
        return request

    def _next_manager(self) -> str:
        if self._hint:
            hint, self._hint = self._hint, None
            return hint
        if not self.managers:
            raise RuntimeError("the agent knows no manager")
        addr = self.managers.pop(0)
        self.managers.append(addr)
        return addr

    def _note_failure(self, addr: str, err: grpc.aio.AioRpcError) -> None:
        details = err.details() or ""
        hint = _LEADER_HINT.search(details)
        if err.code() == grpc.StatusCode.FAILED_PRECONDITION and hint and hint.group(1) != addr:
            self._hint = hint.group(1)
            return
        log.info("session with %s ended: %s %s", addr, err.code().name, details)

    async def _session(self, addr: str) -> None:
        async with grpc.aio.secure_channel(addr, self.config.credentials(),
                                           options=self.config.channel_options) as channel:
            stub = cluster_pb2_grpc.DispatcherStub(channel)
            request = cluster_pb2.SessionRequest(description=self.config.description(),
                                                 addr=self.config.addr)
            stream = stub.Session(request)
            helpers: list[asyncio.Task[None]] = []
            try:
                async for msg in stream:
                    self.connected_to = addr
                    if not helpers:
                        helpers.append(asyncio.create_task(
                            self._heartbeat(stub, msg, stream, request.description)))
                        helpers.extend(self._start_tasks(stub, msg.session_id, stream))
                        if self.config.worker is not None:
                            helpers.append(asyncio.create_task(
                                publish_logs(channel, self.config.worker, msg.node_id)))
                    self._learn_managers(msg)
                    await self.config.on_message(msg)
            finally:
                if self.config.worker is not None:
                    self.config.worker.reporter.attach(None)
                for helper in helpers:
                    helper.cancel()

    def _start_tasks(self, stub: cluster_pb2_grpc.DispatcherStub, session_id: str,
                     stream: Any) -> list[asyncio.Task[None]]:
        worker = self.config.worker
        if worker is None:
            return []

        async def send(updates: list[cluster_pb2.TaskStatusUpdate]) -> None:
            await stub.UpdateTaskStatus(  # type: ignore[misc]
                cluster_pb2.UpdateTaskStatusRequest(session_id=session_id, updates=updates),
                timeout=STATUS_TIMEOUT)

        worker.reporter.attach(send)
        return [asyncio.create_task(self._assignments(stub, session_id, stream, worker))]

    async def _assignments(self, stub: cluster_pb2_grpc.DispatcherStub, session_id: str,
                           stream: Any, worker: Worker) -> None:
        first = True
        try:
            async for msg in stub.Assignments(  # type: ignore[attr-defined]
                    cluster_pb2.AssignmentsRequest(session_id=session_id)):
                await worker.assign(list(msg.tasks), msg, resync=first)
                first = False
            log.info("the assignments stream ended; reopening the session")
        except grpc.aio.AioRpcError as err:
            log.info("assignments stream failed: %s %s; reopening the session",
                     err.code().name, err.details())
        except Exception:
            log.exception("handling assignments failed; reopening the session")
        stream.cancel()

    def _learn_managers(self, msg: cluster_pb2.SessionMessage) -> None:
        addrs = [m.addr for m in msg.managers if m.addr]
        if addrs:
            self.managers = addrs

    async def _heartbeat(self, stub: cluster_pb2_grpc.DispatcherStub,
                         first: cluster_pb2.SessionMessage, stream: object,
                         described: pb.NodeDescription) -> None:
        period = first.heartbeat_period_ns / 1e9 or 5.0
        answered = time.monotonic()
        while True:
            # A new leader gives nodes 3 periods to find it, so 2 leave a node time to try
            # again within that.
            timeout = 2 * period
            request = self._heartbeat_request(first.session_id, timeout)
            # A description that changed since the session opened (an engine that answered
            # late or was restarted) goes with the next heartbeat, the session stays.
            current = self.config.description()
            if current != described:
                request.description.CopyFrom(current)
            sent = time.monotonic()
            try:
                resp = await stub.Heartbeat(request, timeout=timeout)  # type: ignore[misc]
                period = resp.period_ns / 1e9 or period
                described = current
                answered = self.last_heartbeat = time.monotonic()
                self.heartbeat_rtt = self.last_heartbeat - sent
            except grpc.aio.AioRpcError as err:
                unanswered = time.monotonic() - answered
                if keeps_session(err.code(), unanswered, period):
                    log.info("heartbeat not answered (%s, %.0f s since the last answer): the "
                             "leader is busy; trying again on the same session",
                             err.code().name, unanswered)
                    await asyncio.sleep(RETRY_PAUSE * random.uniform(0.8, 1.2))
                    continue
                log.info("heartbeat failed: %s %s; reopening the session",
                         err.code().name, err.details())
                stream.cancel()  # type: ignore[attr-defined]
                return
            try:
                async with asyncio.timeout(period):
                    await self._beat.wait()
            except TimeoutError:
                pass
            self._beat.clear()
