"""The Raft-replicated store: pysyncobj carries serialized StoreBatch entries between managers.

pysyncobj is imported only in this package. Its tick thread applies entries; the asyncio side
proposes through `propose()` and learns the outcome through a future.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SyncObjConf, SyncObjConsumer, replicated

from manager.errors import NO_LEADER, ManagerError, Unavailable
from manager.raft.dumps import DumpWriter, Encode
from manager.raft.guarded import GuardedSyncObj, RaftFailed
from manager.raft.journal import check_raft_state, commands_after
from manager.store.memory import ApplyResult, MemoryStore
from pki import sealing
from proto import store_pb2

log = logging.getLogger(__name__)

# Failures after which the same batch is proposed again. After LEADER_CHANGED it may have
# been committed all the same: its request ID makes the store apply it once and hand the
# retry the first result; a leader's decision carries its epoch, which the store refuses
# once another leader took over.
_RETRYABLE = {FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER,
              FAIL_REASON.LEADER_CHANGED, FAIL_REASON.DISCARDED}
PROPOSE_TIMEOUT = 10.0
DEFAULT_SNAPSHOT_INTERVAL = 10000  # entries between dumps (Docker's Raft.SnapshotInterval)
QUORUM_CHECK = 0.2  # seconds between quorum checks while a proposal is in flight


@dataclass(frozen=True)
class RaftTiming:
    """Entries go out as they are proposed and the commit index as soon as a majority has
    them (`PromptSyncObj`); the append-entries period only paces heartbeats to idle
    followers. pysyncobj's batching stays on: turned off, it sends per command and after
    every apply, and re-sends entries its followers already have (bench/README.md).

    A follower stands for election 0.5-1.0 s after the leader's last append-entries (25-50
    periods, so a busy leader is not deposed by a late tick): a SIGKILLed leader's
    successor acknowledges a write 0.6-0.9 s after the kill (bench/failover.py; 0.8-1.6 s
    gave p50 1.1-1.4 s, and 2.8 s when the two followers split the vote)."""

    append_entries_period: float = 0.02
    auto_tick_period: float = 0.005
    election_min: float = 0.5
    election_max: float = 1.0
    connection_retry: float = 0.5
    connection_timeout: float = 2.0
    # A leader that heard from no majority for this long steps down (pysyncobj's default,
    # 30 s, let a cut-off leader go on calling itself leader): a few election timeouts.
    leader_fallback: float = 3.0

    @property
    def quorum_silence(self) -> float:
        """A leader that heard from no majority for this long answers as having no quorum
        (refuses writes, gives up on those in flight). Not the election timeout: under load
        (3 managers and 1,000 nodes on 2 cores) followers answered 0.5 s late while all was
        well, and writes were refused or reported lost; pysyncobj steps down at this point,
        so a cut-off leader never answers for longer than that."""
        return self.leader_fallback


class _StoreConsumer(SyncObjConsumer):  # type: ignore[misc]
    """Binds the store to pysyncobj: the one replicated method, and protobuf dumps (written
    and read through dumps.DumpWriter: `take`, `_deserialize`). Both are sealed with the
    Raft data key, so the journal and dumps on disk hold no clear store data (secrets, the
    root CA key); data of an older data root, in clear, still loads."""

    def __init__(self, store: MemoryStore, dek: bytes | None) -> None:
        super().__init__()
        self._store = store
        self._dek = dek

    def seal(self, data: bytes) -> bytes:
        return sealing.seal(self._dek, data) if self._dek else data

    def _open(self, data: bytes) -> bytes:
        if self._dek and sealing.is_sealed(data):
            return sealing.unseal(self._dek, data)
        return data

    @replicated  # type: ignore[misc]
    def apply_batch(self, data: bytes) -> ApplyResult:
        return self._store.apply(store_pb2.StoreBatch.FromString(self._open(data)))

    def take(self) -> Encode:
        """On Raft's tick thread, at once: what a dump will hold, encoded later."""
        view, applied = self._store.capture()
        return lambda: self.seal(MemoryStore.encode(view, applied))

    def _deserialize(self, data: bytes) -> None:
        self._store.restore(self._open(data))


class RaftReplica:
    def __init__(self, store: MemoryStore, self_addr: str, peers: list[str], secret: str,
                 state_dir: str, timing: RaftTiming | None = None,
                 on_leader_change: Callable[[], None] | None = None,
                 on_fatal: Callable[[RaftFailed], None] | None = None,
                 dek: bytes | None = None) -> None:
        """`dek`: the Raft data key sealing entries and dumps (None, in clear: tests)."""
        self.store = store
        self.self_addr = self_addr
        os.makedirs(state_dir, exist_ok=True)
        check_raft_state(state_dir)  # raises RaftStateDamaged: never start on damaged files
        t = timing or RaftTiming()
        self._consumer = _StoreConsumer(store, dek)
        dump_file = os.path.join(state_dir, "dump.bin")
        self._dumps = dumps = DumpWriter(dump_file, self._consumer.take,
                                         self._consumer._deserialize)
        conf = SyncObjConf(
            password=secret,
            dynamicMembershipChange=True,
            journalFile=os.path.join(state_dir, "journal.bin"),
            fullDumpFile=dump_file,
            appendEntriesPeriod=t.append_entries_period,
            autoTickPeriod=t.auto_tick_period,
            raftMinTimeout=t.election_min,
            raftMaxTimeout=t.election_max,
            connectionRetryTime=t.connection_retry,
            connectionTimeout=t.connection_timeout,
            leaderFallbackTimeout=t.leader_fallback,
            # Log compaction in a forked child froze the gRPC process for up to a minute and
            # sometimes aborted the child (gRPC is not fork-safe); on pysyncobj's tick thread
            # it silenced heartbeats (dumps.py): a thread of ours writes them.
            useFork=False,
            serializer=dumps.write, serializeChecker=dumps.check, deserializer=dumps.read,
            logCompactionMinEntries=DEFAULT_SNAPSHOT_INTERVAL,
            onStateChanged=(lambda _old, _new: on_leader_change()) if on_leader_change else None,
        )
        self.timing = t
        self._conf = conf
        others = [p for p in peers if p != self_addr]
        self._sync = GuardedSyncObj(self_addr, others, conf, consumers=[self._consumer],
                                    dumps=dumps,
                                    on_fatal=on_fatal)
        self._handoffs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Handoff] = \
            weakref.WeakKeyDictionary()

    # -- state --

    def is_leader(self) -> bool:
        return bool(self._sync._isLeader())

    def leader_addr(self) -> str | None:
        leader = self._sync._getLeader()
        return None if leader is None else str(leader.address)

    def term(self) -> int:
        return int(self._sync._getTerm())

    def has_quorum(self) -> bool:
        """This manager is in touch with a majority through a leader: it is the leader and
        a majority answered recently, or it follows a leader it is connected to."""
        leader = self._sync._getLeader()
        if leader is None:
            return False
        if not self._sync._isLeader():
            return bool(self._sync.isNodeConnected(leader))
        others = list(self._sync.otherNodes)
        heard = getattr(self._sync, "_SyncObj__lastResponseTime", {})
        recent = time.monotonic() - self.timing.quorum_silence
        answered = sum(1 for n in others if heard.get(n, 0.0) > recent)
        return answered + 1 > (len(others) + 1) / 2

    def members(self) -> list[str]:
        others = [str(n.address) for n in self._sync.otherNodes]
        return sorted([self.self_addr, *others])

    def is_connected(self, addr: str) -> bool:
        if addr == self.self_addr:
            return True
        for node in self._sync.otherNodes:
            if node.address == addr:
                return bool(self._sync.isNodeConnected(node))
        return False

    def status(self) -> dict[str, Any]:
        return dict(self._sync.getStatus())

    def progress(self) -> dict[str, int]:
        """Term, commit and applied index (metrics): read without getStatus(), which walks
        pysyncobj's member tables while its thread may change them."""
        return {"raft_term": int(self._sync.raftCurrentTerm),
                "commit_idx": int(self._sync.raftCommitIndex),
                "last_applied": int(self._sync.raftLastApplied)}

    def applied_all_committed(self) -> bool:
        """Whether the store holds every entry this member knows to be committed (at start,
        pysyncobj loads the dump and applies the journal in its tick thread, quorum or not)."""
        status = self._sync.getStatus()
        return bool(status["last_applied"] >= status["commit_idx"])

    def ready(self) -> bool:
        return bool(self._sync.isReady())

    def set_snapshot_interval(self, entries: int) -> None:
        """The swarm's Raft.SnapshotInterval: pysyncobj reads it at each compaction check."""
        self._conf.logCompactionMinEntries = entries or DEFAULT_SNAPSHOT_INTERVAL

    # -- writes --

    async def propose(self, batch: store_pb2.StoreBatch,
                      timeout: float = PROPOSE_TIMEOUT) -> int:
        """Commit `batch` through Raft (forwarded to the leader from a follower) within
        `timeout` seconds, failing at once while this manager has no quorum.

        Returns the store version it produced; raises the store's error when a check failed.
        """
        if not batch.timestamp_ns:
            batch.timestamp_ns = time.time_ns()
        if not batch.request_id:
            batch.request_id = uuid.uuid4().hex
        data = self._consumer.seal(batch.SerializeToString())
        try:
            async with asyncio.timeout(timeout):
                return await self._propose(data)
        except TimeoutError:
            raise Unavailable(f"the change was not confirmed within {timeout:g} s (its "
                              "outcome is unknown: read it back): the managers have no "
                              "leader or no quorum; check `docker node ls` on a manager"
                              ) from None

    async def _propose(self, data: bytes) -> int:
        while True:
            self._require_quorum()
            result, reason = await self._submit(
                lambda cb: self._consumer.apply_batch(data, callback=cb))
            if reason == FAIL_REASON.SUCCESS:
                assert isinstance(result, ApplyResult)
                if result.error is not None:
                    raise result.error
                return result.version
            if reason not in _RETRYABLE:
                raise Unavailable(_no_commit_message(reason))
            await asyncio.sleep(0.05)

    def _require_quorum(self) -> None:
        if not self.has_quorum():
            raise Unavailable(_no_commit_message(FAIL_REASON.MISSING_LEADER))

    async def add_member(self, addr: str, timeout: float = 10.0) -> None:
        await self._membership(self._sync.addNodeToCluster, addr, timeout)

    async def remove_member(self, addr: str, timeout: float = 10.0) -> None:
        await self._membership(self._sync.removeNodeFromCluster, addr, timeout)

    async def _membership(self, change: Callable[..., None], addr: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            # No quorum check while it is in flight: a member being added counts in the
            # leader's majority before it has answered once (going from 1 to 2 managers, a
            # majority is both), so the check gave up on joins that then succeeded.
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    _, reason = await self._submit(lambda cb: change(addr, callback=cb),
                                                   check_quorum=False)
            except TimeoutError:
                raise Unavailable(f"Raft membership change for {addr} was not committed in "
                                  f"{timeout:g} s: is that manager up and reachable?") from None
            if reason == FAIL_REASON.SUCCESS:
                return
            # REQUEST_DENIED: another membership change is still being committed.
            if time.monotonic() > deadline:
                raise Unavailable(f"Raft membership change for {addr} failed: "
                                  f"{_no_commit_message(reason)}")
            await asyncio.sleep(0.1)

    async def _submit(self, start: Callable[[Callable[[Any, int], None]], None],
                      check_quorum: bool = True) -> tuple[Any, int]:
        """Start a Raft command and wait for its outcome; while waiting, give up as soon as
        this manager loses its quorum (a cut-off leader must not leave callers hanging),
        unless not `check_quorum`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, int]] = loop.create_future()
        handoff = self._handoffs.get(loop)
        if handoff is None:
            handoff = self._handoffs[loop] = _Handoff(loop)

        def done(result: Any, reason: int) -> None:
            handoff.put(future, (result, reason))

        start(done)
        if not check_quorum:
            return await future
        while True:
            try:
                async with asyncio.timeout(QUORUM_CHECK):
                    return await asyncio.shield(future)
            except TimeoutError:
                if not self.has_quorum():
                    raise Unavailable(
                        "this manager lost contact with the majority of managers while the "
                        "change was in flight (its outcome is unknown: read it back from "
                        "another manager)") from None

    def transfer_leadership(self) -> None:
        self._sync.transferLeadership()

    def close(self) -> None:
        self._sync.destroy_synchronous()
        self._dumps.wait(10.0)  # a dump being written: the next start reads it

    async def dump(self, timeout: float = 10.0) -> None:
        """Write a full dump of the store now (after a forced new cluster, the store came
        from the old log, which was set aside: until dumped it is only in memory)."""
        path = self._conf.fullDumpFile
        before = os.path.getmtime(path) if os.path.exists(path) else None
        self._sync.forceLogCompaction()
        async with asyncio.timeout(timeout):
            while not os.path.exists(path) or os.path.getmtime(path) == before:
                await asyncio.sleep(0.05)


def apply_logged_tail(store: MemoryStore, state_dir: str, applied: int,
                      dek: bytes | None) -> int:
    """Apply to `store` the entries of the journal in `state_dir` after index `applied`
    (a closed replica's: for a forced new cluster, which keeps what this manager logged,
    committed or not, as Docker's does). Returns how many applied cleanly."""
    count = 0
    for data in commands_after(state_dir, applied):
        if dek and sealing.is_sealed(data):
            data = sealing.unseal(dek, data)
        if store.apply(store_pb2.StoreBatch.FromString(data)).error is None:
            count += 1
    return count


class _Handoff:
    """Hands outcomes from pysyncobj's thread to a loop: the outcomes of one tick (many
    commits at once under load) cost one wake-up of the loop, not one each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready: deque[tuple[asyncio.Future[tuple[Any, int]], tuple[Any, int]]] = deque()
        self._scheduled = False

    def put(self, future: asyncio.Future[tuple[Any, int]], value: tuple[Any, int]) -> None:
        self._ready.append((future, value))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._settle_all)
            except RuntimeError:  # the loop is closed: nobody waits any more
                self._scheduled = False

    def _settle_all(self) -> None:
        # Cleared first: an outcome put while settling schedules another round.
        self._scheduled = False
        while self._ready:
            future, value = self._ready.popleft()
            if not future.done():
                future.set_result(value)


def _no_commit_message(reason: int) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if isinstance(v, int)}
    return (f"{NO_LEADER} The change was not committed ({names.get(reason, reason)}): the "
            "managers have no leader or no quorum; check `docker node ls` on a manager")


__all__ = ["RaftReplica", "RaftTiming", "ManagerError"]
