"""The dispatcher: agents hold a session with the leader and heartbeat over it; the leader
marks nodes READY while they do and DOWN when they stop.

Beyond Docker: a session that ends (the node's process died, its TCP connection reset) marks
the node down after a short reconnect grace, instead of waiting for 3 missed heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator

import grpc

from manager import grpcapi
from manager.dispatcher.assignments import AssignmentIndex, StatusWriter
from manager.dispatcher.sessions import (
    DEFAULT_HEARTBEAT_NS,
    GRACE_MULTIPLIER,
    LIVENESS_MIN_PASS,
    NodeSession,
    QueueWaits,
    changes_sessions,
    down_limit,
    down_reason,
    heartbeat_period,
    liveness_pass,
    mark_down,
    mark_ready_again,
    queue_wait,
    reports_news,
    session_opened,
    silent_since,
    take_news,
)
from manager.errors import FailedPrecondition, ManagerError, NotFound
from manager.identity import new_id
from manager.manager import Manager
from manager.runtime import Controller
from manager.store.memory import Event, StoreView
from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# Sessions wake on node changes (gathered over SESSION_COALESCE) and when the term ends;
# RECHECK is only a safety net.
RECHECK = 30.0
SESSION_COALESCE = 0.3
# A heartbeat that waited this long in the leader's gRPC queue is logged (once a minute).
QUEUE_WAIT_LOGGED = 1.0
QUEUE_WAIT_LOG_EVERY = 60.0
class Dispatcher(cluster_pb2_grpc.DispatcherServicer):
    def __init__(self, manager: Manager) -> None:
        self.mgr = manager
        self.sessions: dict[str, NodeSession] = {}
        self._leader_since = time.monotonic()
        self.assignments = AssignmentIndex(manager.store)
        self.statuses = StatusWriter(manager)
        self._managers_cache: tuple[int, list[cluster_pb2.WeightedPeer]] = (-1, [])
        # Bumped (on the Raft thread) when a node change touches what session messages
        # carry (the managers, a node's role): they are rebuilt, and sessions woken, only
        # then, not on each of the thousands of node writes of a large swarm joining.
        self._bumps = itertools.count(1)  # next() is atomic: two threads bump
        self._node_changes = 0
        self._nodes_changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending: asyncio.TimerHandle | None = None
        self._last_check = 0.0  # when the liveness check last ran (monotonic)
        self.check_every = LIVENESS_MIN_PASS  # seconds between checks (liveness_pass)
        self.liveness = NodeLiveness(self)
        self._node_writes: dict[str, asyncio.Task[None]] = {}  # node ID → its heartbeat's write
        self.queue_waits = QueueWaits()
        self._queue_wait_logged = -QUEUE_WAIT_LOG_EVERY
        manager.store.watch(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        if any(changes_sessions(e) for e in events):
            self._node_changes = next(self._bumps)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._wake_sessions_soon)

    def _wake_sessions_soon(self) -> None:
        """Wake every session once per SESSION_COALESCE at most: each rebuilds its message,
        so waking them all on every node change was quadratic while 1,000 nodes joined."""
        if self._wake_pending is None:
            loop = asyncio.get_running_loop()
            self._wake_pending = loop.call_later(SESSION_COALESCE, self._wake_sessions)

    def _wake_sessions(self) -> None:
        self._wake_pending = None
        changed, self._nodes_changed = self._nodes_changed, asyncio.Event()
        changed.set()

    def _period(self) -> float:
        # Read from the view (shared, not copied): this runs on every heartbeat.
        view = self.mgr.view()
        cluster = view.cluster()
        ns = (cluster.spec.dispatcher.heartbeat_period_ns if cluster else 0) \
            or DEFAULT_HEARTBEAT_NS
        return heartbeat_period(ns / 1e9, len(view.table(pb.Node)))

    @grpcapi.streaming
    async def Session(self, request: cluster_pb2.SessionRequest,
                      context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[cluster_pb2.SessionMessage]:
        cluster = self.mgr.cluster()
        ident = grpcapi.caller(context, cluster.id, (pb.WORKER, pb.MANAGER), self.mgr.store)
        self._require_leader()
        node = self.mgr.node(ident.node_id)
        jitter = 1 + random.uniform(-0.1, 0.1)
        session = NodeSession(new_id(), node.id, self._period() * jitter, jitter)
        self.sessions[node.id] = session
        self.assignments.wake(node.id)  # a stream of the session it replaces ends
        self.assignments.node_back(node.id)
        await self._mark_ready(node, request)
        last: cluster_pb2.SessionMessage | None = None
        seen = -1  # the node table the last message was built from
        try:
            while self.mgr.is_leader():
                changed = self._nodes_changed
                version = self._node_changes
                if version != seen:  # the message is made from the node table only
                    seen = version
                    msg = self._message(session)
                    if msg != last:
                        yield msg
                        last = msg
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECHECK):
                        await changed.wait()
        finally:
            if self.sessions.get(node.id) is session:
                session.ended_at = time.monotonic()
                self.assignments.wake(node.id)
                self.assignments.node_gone(node.id)

    @grpcapi.unary
    async def Heartbeat(self, request: cluster_pb2.HeartbeatRequest,
                        context: grpc.aio.ServicerContext) -> cluster_pb2.HeartbeatResponse:
        waited = queue_wait(request.timeout_ns, context.time_remaining())
        ident = grpcapi.caller(context, self.mgr.cluster().id, (pb.WORKER, pb.MANAGER),
                               self.mgr.store)
        return self.heartbeat(ident.node_id, request, waited)

    def heartbeat(self, node_id: str, request: cluster_pb2.HeartbeatRequest,
                  waited: float = 0.0) -> cluster_pb2.HeartbeatResponse:
        """A node's heartbeat: answered at once, whatever the leader has to write. `waited`:
        how long it waited in gRPC's queue before this handler took it."""
        now = time.monotonic()
        self._note_queue_wait(waited, now)
        session = self.sessions.get(node_id)
        if session is None or session.session_id != request.session_id:
            raise NotFound(f"session {request.session_id} of node {node_id} is not "
                           "known to this leader; open a new session")
        session.last_seen = now
        session.period = self._period() * session.jitter  # the swarm may have grown
        node = self.mgr.view().get(pb.Node, node_id)
        if node is not None and self.mgr.epoch and (
                node.status.state != pb.NODE_READY or
                node.status.message != request.status_message or
                reports_news(node, request)):
            # A node marked down that still heartbeats is alive: bring it back; and show
            # what it reports about itself. Written beside the answer, never before it: a
            # heartbeat waiting behind a busy leader's writes timed out, the node reopened
            # its session, and the reconnects fed the backlog (2,000 nodes stuck).
            self._write_node(node.id, request)
        return cluster_pb2.HeartbeatResponse(period_ns=int(session.period * 1e9))

    def _note_queue_wait(self, waited: float, now: float) -> None:
        if waited <= 0:
            return
        self.queue_waits.note(waited, now)
        if waited >= QUEUE_WAIT_LOGGED and now - self._queue_wait_logged >= QUEUE_WAIT_LOG_EVERY:
            self._queue_wait_logged = now
            log.warning("a heartbeat waited %.1f s in this leader's gRPC queue (the leader is "
                        "busy or short of CPU); nodes get twice that longer before they are "
                        "marked down", waited)

    def queue_wait(self) -> float:
        """The longest a heartbeat waited in gRPC's queue within the nodes' grace period."""
        return self.queue_waits.longest(time.monotonic(), self._period() * GRACE_MULTIPLIER)

    def _write_node(self, node_id: str, request: cluster_pb2.HeartbeatRequest) -> None:
        """What the node's heartbeat says, written in the background; one write per node
        at a time (a later heartbeat repeats what is still to write)."""
        if node_id in self._node_writes:
            return

        def ready_with_news(node: pb.Node) -> bool:
            ready = mark_ready_again(node, message=request.status_message)
            return take_news(node, request=request) | ready

        async def write() -> None:
            try:
                await self.mgr.modify(pb.Node, node_id, ready_with_news, fenced=True)
            except ManagerError as err:  # the next heartbeat tries again
                log.info("node %s: writing what its heartbeat says failed: %s", node_id, err)
            except Exception:
                log.exception("node %s: writing what its heartbeat says failed", node_id)
            finally:
                self._node_writes.pop(node_id, None)
        self._node_writes[node_id] = asyncio.create_task(write())

    @grpcapi.streaming
    async def Assignments(self, request: cluster_pb2.AssignmentsRequest,
                          context: grpc.aio.ServicerContext
                          ) -> AsyncIterator[cluster_pb2.AssignmentsMessage]:
        ident = grpcapi.caller(context, self.mgr.cluster().id, (pb.WORKER, pb.MANAGER),
                               self.mgr.store)
        self._require_leader()
        session = self._session(ident.node_id, request.session_id)

        def alive() -> bool:
            return (self.mgr.is_leader() and session.ended_at is None
                    and self.sessions.get(session.node_id) is session)

        async for msg in self.assignments.stream(session.node_id, alive):
            yield msg

    @grpcapi.unary
    async def UpdateTaskStatus(self, request: cluster_pb2.UpdateTaskStatusRequest,
                               context: grpc.aio.ServicerContext) -> cluster_pb2.Empty:
        ident = grpcapi.caller(context, self.mgr.cluster().id, (pb.WORKER, pb.MANAGER),
                               self.mgr.store)
        self._require_leader()
        session = self._session(ident.node_id, request.session_id)
        await self.statuses.submit(session.node_id, list(request.updates))
        return cluster_pb2.Empty()

    def _session(self, node_id: str, session_id: str) -> NodeSession:
        session = self.sessions.get(node_id)
        if session is None or session.session_id != session_id or session.ended_at is not None:
            raise NotFound(f"session {session_id} of node {node_id} is not open on this "
                           "leader; open a new session")
        return session

    def _require_leader(self) -> None:
        if not self.mgr.is_leader():
            leader = self.mgr.leader_addr() or ""
            raise FailedPrecondition(f"not the leader; leader={leader}")

    def _message(self, session: NodeSession) -> cluster_pb2.SessionMessage:
        node = self.mgr.store.get(pb.Node, session.node_id)
        return cluster_pb2.SessionMessage(
            session_id=session.session_id, node_id=session.node_id,
            managers=self._managers(),
            heartbeat_period_ns=int(session.period * 1e9),
            desired_role=node.role if node is not None else pb.WORKER)

    def _managers(self) -> list[cluster_pb2.WeightedPeer]:
        """The managers' addresses, computed once per node-table change for all sessions
        (each session rebuilding it from every node was O(nodes²) per poll)."""
        version = self._node_changes  # read first: a later change only makes it recompute
        if self._managers_cache[0] != version:
            managers = [cluster_pb2.WeightedPeer(node_id=n.id, addr=n.manager_status.addr)
                        for n in self.mgr.store.list_view(pb.Node) if n.manager_status.addr]
            self._managers_cache = (version, sorted(managers, key=lambda p: p.addr))
        return self._managers_cache[1]

    async def _mark_ready(self, node: pb.Node, request: cluster_pb2.SessionRequest) -> None:
        ready = functools.partial(session_opened, request=request)
        await self.mgr.modify(pb.Node, node.id, ready, fenced=True)

    def begin_term(self) -> None:
        """A leadership term starts: sessions may already be open (agents race it); keep
        them, and give every node the grace period before judging it."""
        self._loop = asyncio.get_running_loop()
        self._leader_since = time.monotonic()
        self._last_check = 0.0
        self._node_changes = next(self._bumps)  # a restored snapshot brings no events
        self.assignments.start()

    def _credit_stall(self, now: float) -> None:
        """A leader too busy to run this check on time was too busy to read heartbeats as
        well: the time it lost is not the nodes' silence, so every session gets it back."""
        last, self._last_check = self._last_check, now
        stalled = now - last - 2 * self.check_every if last else 0.0
        if stalled > 0:
            log.warning("the leader was %.1f s late checking on nodes (busy); not counting "
                        "that time against their heartbeats", stalled)
            for session in self.sessions.values():
                session.last_seen += stalled
                if session.ended_at is not None:
                    session.ended_at += stalled

    def end_term(self) -> None:
        """Leadership ended: wake the streams so they close and agents find the leader."""
        self._wake_sessions()
        self.assignments.wake_all()

    async def check_liveness(self, view: StoreView) -> None:
        now = time.monotonic()
        self._credit_stall(now)
        period = self._period()
        self.check_every = liveness_pass(period)
        waited = self.queue_wait()
        nodes = view.list(pb.Node)
        silent = []
        for node in nodes:
            if node.status.state != pb.NODE_READY:
                continue
            session = self.sessions.get(node.id)
            reason = down_reason(session, now, self._leader_since, period, waited)
            if reason:
                silent.append((silent_since(session), node.id, reason))
        silent.sort()
        limit = down_limit(len(nodes))
        if len(silent) > limit:
            log.warning("%d nodes silent at once; marking the %d longest silent down now, the "
                        "others in the next checks unless they are heard from",
                        len(silent), limit)
        for _since, node_id, reason in silent[:limit]:
            log.info("node %s down: %s", node_id, reason, extra={"node": node_id})
            self.sessions.pop(node_id, None)
            mark = functools.partial(mark_down, reason=reason)
            await self.mgr.modify(pb.Node, node_id, mark, fenced=True)


class NodeLiveness(Controller):
    """The dispatcher's leader half: marks nodes down whose sessions went silent."""

    name = "node liveness"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def relevant(self, event: Event) -> bool:
        return False  # it judges by time, not by store changes

    def begin(self) -> None:
        self.dispatcher.begin_term()

    def end(self) -> None:
        self.dispatcher.end_term()

    async def run(self, view: StoreView) -> float | None:
        await self.dispatcher.check_liveness(view)
        return self.dispatcher.check_every


