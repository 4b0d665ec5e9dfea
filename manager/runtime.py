"""The leader's runtime: the one place that runs the leader-only controllers.

While this manager is the Raft leader it runs one leadership term: it commits a new epoch
(manager.open_term), then runs every controller under one TaskGroup until leadership is
lost, when the group is cancelled as a whole. Each controller has one shape (`Controller`):
store events it finds relevant wake it, it decides over one consistent view of the store and
writes fenced by the term's epoch. A controller that crashes is logged with its traceback
and restarted with backoff; one that keeps crashing makes this manager step down, so a
healthy manager can lead instead.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from manager.errors import Fenced, Unavailable
from manager.manager import Manager
from manager.store.memory import Event, StoreView

log = logging.getLogger(__name__)

COALESCE = 0.05  # seconds between a controller's passes, on average (see Controller, Pacer)
BURST = 3  # passes a controller may make back to back after a quiet spell (Pacer)
LEADERSHIP_CHECK = 0.1  # seconds between checks that this manager still leads
PASS_SHARE = 1.0  # a controller rests this many times as long as its last pass took
NO_QUORUM_RETRY = 0.5  # seconds before a pass that found no quorum runs again
BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0
CRASH_WINDOW, CRASHES_TO_STEP_DOWN = 60.0, 5
STUCK_AFTER = 10.0  # seconds a term's tasks may take to stop once its leadership is lost


class Controller(abc.ABC):
    """One shape for every leader controller. `run(view)` makes one pass over a consistent
    view and returns how many seconds may pass, at most, before the next pass even without
    a relevant store event (None: only on an event)."""

    name = "controller"
    # One pass per this many seconds in a stream of changes (a few back to back after a
    # quiet spell, see Pacer): a pass over the whole store costs more than one over a few
    # changes, so a controller that reads everything runs less often.
    coalesce = COALESCE

    def relevant(self, event: Event) -> bool:
        """Whether a store change may change this controller's decisions. Called on the
        Raft thread: read the event only."""
        return True

    def begin(self) -> None:
        """Called when a leadership term starts, before the first pass."""
        return None

    def end(self) -> None:
        """Called when the controller stops (the term ended, or it crashed)."""
        return None

    @abc.abstractmethod
    async def run(self, view: StoreView) -> float | None:
        """One pass."""


class LeadershipLost(Exception):
    pass


class LeaderRuntime:
    def __init__(self, mgr: Manager, controllers: Sequence[Controller]) -> None:
        self.mgr = mgr
        self.controllers = list(controllers)
        self.terms = 0  # terms this manager has led (tests, metrics)

    async def run(self) -> None:
        """For the manager's whole life: lead whenever this manager is the leader."""
        while True:
            await self._until(self._leads)
            try:
                epoch = await self.mgr.open_term()
            except Unavailable as err:
                log.info("could not open a leadership term: %s", err)
                await asyncio.sleep(NO_QUORUM_RETRY)
                continue
            await self._lead(epoch)

    async def _lead(self, epoch: int) -> None:
        # Controllers start once the cluster object exists (`swarm init` writes it just
        # after this node became the leader).
        await self._until(lambda: self.mgr.view().cluster() is not None
                          or not self._still_leads(epoch))
        if self._still_leads(epoch):
            await self._term(epoch)

    def _leads(self) -> bool:
        return self.mgr.replica.is_leader()

    def _still_leads(self, epoch: int) -> bool:
        return self._leads() and self.mgr.replica.term() == epoch

    async def _until(self, check: Callable[[], bool]) -> None:
        while not check():
            await asyncio.sleep(LEADERSHIP_CHECK)

    async def _term(self, epoch: int) -> None:
        self.terms += 1
        log.info("leading the swarm in epoch %d with %d controllers", epoch,
                 len(self.controllers))
        watchdog: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._watch(epoch), name="leadership"),
                         *(group.create_task(self._supervise(c), name=c.name)
                           for c in self.controllers)]
                watchdog = asyncio.create_task(_report_stuck(epoch, tasks))
        except* LeadershipLost:
            log.info("leadership of epoch %d ended; controllers stopped", epoch)
        finally:
            self.mgr.epoch = 0
            if watchdog is not None:
                watchdog.cancel()

    async def _watch(self, epoch: int) -> None:
        await self._until(lambda: not self._still_leads(epoch))
        raise LeadershipLost()

    async def _supervise(self, controller: Controller) -> None:
        try:
            await supervise(controller.name, lambda: self._drive(controller),
                            on_crashing=lambda: self._step_down(controller))
        except Fenced as err:
            log.info("%s: %s", controller.name, err)
            raise LeadershipLost() from err

    def _step_down(self, controller: Controller) -> None:
        log.error("%s crashed %d times in %g s: stepping down so another manager leads",
                  controller.name, CRASHES_TO_STEP_DOWN, CRASH_WINDOW)
        self.mgr.replica.transfer_leadership()
        raise LeadershipLost()

    async def _drive(self, controller: Controller) -> None:
        """Pass after pass: at the start, on relevant events, and when a pass asked."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def on_events(events: list[Event]) -> None:  # on the Raft thread
            # Every event, not any(): relevant() also marks what changed.
            if sum(controller.relevant(e) for e in events):
                loop.call_soon_threadsafe(changed.set)

        cancel = self.mgr.store.watch(on_events)
        pacer = Pacer(controller.coalesce)
        try:
            controller.begin()
            wait: float | None = 0.0
            rest_until = 0.0
            while True:
                await _wait(changed, wait)
                start_at = max(rest_until, pacer.ready_at(loop.time()))
                await asyncio.sleep(max(0.0, start_at - loop.time()))
                changed.clear()
                started = loop.time()
                pacer.take(started)
                wait = await self._pass(controller)
                _stop_if_cancelled()
                ended = loop.time()
                rest_until = ended + (ended - started) * PASS_SHARE
        finally:
            cancel()
            controller.end()

    async def _pass(self, controller: Controller) -> float | None:
        try:
            return await controller.run(self.mgr.view())
        except Fenced:
            raise
        except Unavailable as err:
            log.info("%s: no quorum (%s); trying again", controller.name, err)
            return NO_QUORUM_RETRY


class Pacer:
    """When a controller's next pass may start: a bucket of BURST passes, refilled by one
    every `interval` seconds. A change after a quiet spell is handled at once, and so are
    the few that follow it along one path (a new task: created, allocated, scheduled), while
    a stream of changes is handled in batches, one pass per `interval`. Besides, after each
    pass the controller rests PASS_SHARE times as long as the pass took, so one whose
    passes grow long (a big cluster in churn) takes at most half the event loop, and
    heartbeats, status reports and the API keep their turn (without that rest, heartbeats
    timed out and nodes were marked down while 10,000 tasks started)."""

    def __init__(self, interval: float, burst: int = BURST) -> None:
        self.interval = interval
        self.burst = burst
        self.tokens = float(burst)
        self._stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self.interval <= 0:
            self.tokens = float(self.burst)
        elif self._stamp is not None:
            self.tokens = min(float(self.burst),
                              self.tokens + (now - self._stamp) / self.interval)
        self._stamp = now

    def ready_at(self, now: float) -> float:
        """The earliest time a pass may start."""
        self._refill(now)
        return now if self.tokens >= 1 else now + (1 - self.tokens) * self.interval

    def take(self, now: float) -> None:
        """A pass starts now."""
        self._refill(now)
        self.tokens -= 1


async def supervise(name: str, run: Callable[[], Awaitable[None]],
                    on_crashing: Callable[[], None] | None = None,
                    passthrough: tuple[type[Exception], ...] = (Fenced,)) -> None:
    """Run `run()` until it returns; when it crashes, log the traceback and run it again
    after a backoff that grows with the crashes of the last CRASH_WINDOW seconds. After
    CRASHES_TO_STEP_DOWN of them `on_crashing()` is called (it may raise to give up).
    Exceptions in `passthrough` are not crashes: they end the supervision."""
    crashes: deque[float] = deque()
    while True:
        try:
            await run()
            return
        except passthrough:
            raise
        except Exception:
            log.exception("%s crashed; restarting it", name)
        now = time.monotonic()
        crashes.append(now)
        while crashes[0] < now - CRASH_WINDOW:
            crashes.popleft()
        if len(crashes) >= CRASHES_TO_STEP_DOWN and on_crashing is not None:
            on_crashing()
        await asyncio.sleep(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (len(crashes) - 1)))


def _stop_if_cancelled() -> None:
    """Stops a controller whose task was cancelled during a pass that swallowed it:
    asyncio.gather hands its awaiter a child's exception instead of the CancelledError when a
    child ends with one while the gather is being cancelled (a write refused, or found without
    quorum, as the term ended), and the pass takes that for a failed write and returns. The
    term's task group cancels each task once, so such a controller ran on, and the term never
    ended (5,000 nodes on 3 managers: a leader that won back the leadership led with no
    controllers for 5 minutes)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def _report_stuck(epoch: int, tasks: Sequence[asyncio.Task[None]]) -> None:
    """Once a term's leadership is lost its tasks are cancelled, and the next term can only
    start when all have stopped: one that does not (it swallows the cancellation, or waits on
    something that ignores it) would leave this manager leading with no controllers. Says
    which, and where each waits, if any is still running STUCK_AFTER seconds on. A term's
    tasks run until it ends, so the first of them to end is where its ending starts."""
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(STUCK_AFTER)
    stuck = [t for t in tasks if not t.done()]
    if stuck:
        log.error("leadership of epoch %d ended %g s ago but %d of its tasks have not stopped, "
                  "so no new term can start here: %s", epoch, STUCK_AFTER, len(stuck),
                  "; ".join(f"{t.get_name()} at {_where(t)}" for t in stuck))


def _where(task: asyncio.Task[None]) -> str:
    """The task's chain of awaits, outermost first (its own get_stack() shows only the
    outermost coroutine)."""
    places = []
    awaited: Any = task.get_coro()
    while awaited is not None and getattr(awaited, "cr_frame", None) is not None:
        frame = awaited.cr_frame
        places.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}"
                      f":{frame.f_lineno})")
        awaited = awaited.cr_await
    return " -> ".join(places) or "(no frame)"


async def _wait(event: asyncio.Event, timeout: float | None) -> None:
    if timeout is None:
        await event.wait()
        return
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            await event.wait()
    except TimeoutError:
        pass
