"""A SyncObj that sends entries as they come instead of on its append-entries timer.

pysyncobj 0.3.17 with `appendEntriesUseBatch` (its default) sends log entries only when its
append-entries period (20 ms) has run out, and its tick thread sleeps in its poller up to
`autoTickPeriod` (5 ms) without being woken for a new command; a follower learns that an
entry is committed only with the next period's append-entries. So every commit waited for
the timer, and a write through a follower two of them. With batching off it sends one
AppendEntries per command and another after every apply, and re-sends entries followers
already have (below), which its followers log as "truncating already-applied log entries".

Here, instead:
- proposing a command wakes the tick thread (a pipe in its poller, one write until the
  thread has woken);
- after the tick moved queued commands into the leader's log, one AppendEntries per
  follower carries all of them (what arrived meanwhile goes together);
- as soon as the commit index moved (a majority acknowledged), the followers are told,
  so a follower's forwarded write is answered without waiting for the timer;
- a lone leader (one manager) ticks again at once after appending, as it commits at the
  start of a tick;
- the timer still sends heartbeats to idle followers;
- a follower's late acknowledgement no longer moves the leader's next index for it back
  over entries already sent, which made pysyncobj send them again: the follower then
  dropped its log from there and appended the same entries anew;
- a follower whose election deadline has passed reads what has arrived before it stands:
  pysyncobj checks the deadline at the start of a tick and polls its sockets at the end, so
  a tick thread held up after a poll that found nothing (on a busy manager: waiting for the
  interpreter while the event loop runs) stood for election with the leader's heartbeats
  unread in its socket, and the leadership moved for nothing;
- a leader whose tick thread has recently been held up asks its followers to wait that
  much longer before they stand (`patience.py`);
- a follower keeps the entries it already has (`raft_append`): pysyncobj deleted
  everything after an AppendEntries' previous index even when nothing conflicted, so an
  entry the follower had acknowledged could vanish from it. A leader that counted that
  acknowledgement committed an entry a majority no longer had; when it then lost its
  leadership (paused 2 s during a burst, in bench/scale_sim.py with 3 managers) the new
  leader's log lacked it, the old leader logged "truncating already-applied log entries",
  its store had diverged, and agents' acknowledged status reports were gone (tasks stuck
  Assigned on live nodes).

This relies on pysyncobj internals (name-mangled members); tests/unit/test_raft_prompt.py
pins them, so an upgrade of pysyncobj that changes them fails there first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pysyncobj import SyncObj
from pysyncobj.poller import POLL_EVENT_TYPE

from manager.raft import patience

log = logging.getLogger(__name__)


class Wakeup:
    """A pipe in the tick thread's poller: a write ends its poll at once. One write until
    the thread has drained it: the tick after that poll takes every command queued before."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self._lock = threading.Lock()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pending = False
        poller.subscribe(self._read, self._drain, POLL_EVENT_TYPE.READ)

    def wake(self) -> None:
        if self.pending:
            return
        self.pending = True
        with self._lock:
            if self._write < 0:
                return
            try:
                os.write(self._write, b"w")
            except BlockingIOError:  # full: the thread has plenty to wake it
                pass

    def _drain(self, _fd: int, _event: int) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        # Only now: a wake() between the reads and here skipped its write, and its command
        # is taken by the tick that follows this poll.
        self.pending = False

    def close(self) -> None:
        with self._lock:
            if self._write < 0:
                return
            self._poller.unsubscribe(self._read)
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1


Entry = Sequence[Any]  # pysyncobj's log entry: (command, index, term)


def raft_append(message: dict[str, Any], log_from: Callable[[int], Sequence[Entry]],
                last_index: int) -> dict[str, Any]:
    """An AppendEntries message as Raft's follower rule (§5.3) would apply it, in the form
    pysyncobj's handler applies literally: that handler deletes every entry after
    `prevLogIdx` and appends the message's entries. Entries the follower already has with
    the same term are taken off the front, so the deletion starts at the first conflict (or
    nothing is deleted); when nothing conflicts and the follower has more entries of the
    leader's term, the message is moved to the end of the log so that none is deleted.
    `log_from(i)`: the follower's entries from index i to its end."""
    if "prevLogIdx" not in message or message.get("transmission") is not None:
        return message
    prev_idx = message["prevLogIdx"]
    if prev_idx >= last_index:
        return message  # nothing after the previous entry: nothing to delete
    ours = list(log_from(prev_idx))
    if not ours or ours[0][1] != prev_idx or ours[0][2] != message["prevLogTerm"]:
        return message  # pysyncobj refuses it (the leader steps back)
    ours = ours[1:]
    entries = list(message.get("entries", []))
    same = 0
    while same < min(len(entries), len(ours)) and ours[same][2] == entries[same][2]:
        same += 1
    if same < len(entries):
        if same == 0:
            return message
        last = entries[same - 1]
        return {**message, "prevLogIdx": last[1], "prevLogTerm": last[2],
                "entries": entries[same:]}
    if any(entry[2] != message["term"] for entry in ours[same:]):
        # Entries after the message's of an earlier term: the leader may not have them,
        # so they are neither kept as acknowledged nor committed (pysyncobj's handling).
        return message
    last = ours[-1]
    return {**message, "prevLogIdx": last[1], "prevLogTerm": last[2], "entries": []}


class PromptSyncObj(SyncObj):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before SyncObj.__init__ so that pysyncobj counts them as its own properties
        # and leaves them out of its full dumps.
        self._wakeup: Wakeup | None = None
        self._sent_index = 0
        self._sent_commit = 0
        self._tick_at = self._tick_cpu = self._held_up_logged = 0.0
        self._gaps = patience.RecentMax()
        self._asked = self._asked_at = 0.0  # the patience this leader last asked, and when
        self._patience: tuple[Any, float] = (None, 0.0)  # (leader, seconds) asked of us
        super().__init__(*args, **kwargs)
        # pysyncobj's tick thread already polls: subscribing from here is safe under the
        # GIL, and a command proposed before this line waits at most one tick.
        self._wakeup = Wakeup(self._poller)

    def _doDestroy(self) -> None:  # noqa: N802 (pysyncobj's name)
        # pysyncobj saves the commit index to the journal's meta file at most once a second
        # and not on close: a manager stopped within that second, then started alone (its
        # peers gone, `--force-new-cluster`), believed nothing it had committed was.
        self._SyncObj__raftLog.onOneSecondTimer()
        super()._doDestroy()
        if self._wakeup is not None:
            self._wakeup.close()

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 (pysyncobj's names)
        self._note_held_up()
        if self._isLeader():
            self._ask_patience()
        else:
            self._asked = 0.0
            if self._SyncObj__raftElectionDeadline < time.monotonic():
                self._poller.poll(0)  # a heartbeat read here moves the deadline
        super()._onTick(timeToWait)

    def _note_held_up(self) -> None:
        """Says when this tick comes over half an election timeout after the last (at most
        once a second): a leader's heartbeats, or a follower's patience, were held up that
        long, which is what moves the leadership on an overloaded manager. The thread's own
        CPU time in that gap tells its own work (applying entries) from waiting for the
        interpreter or a CPU."""
        now, last = time.monotonic(), self._tick_at
        cpu, last_cpu = time.thread_time(), self._tick_cpu
        self._tick_at, self._tick_cpu = now, cpu
        gap, limit = now - last, self._SyncObj__conf.raftMinTimeout / 2
        if last:
            self._gaps.add(gap, now)
        if last and gap > limit and now - self._held_up_logged > 1.0:
            self._held_up_logged = now
            log.warning("Raft's tick thread was held up %.2f s as %s, %.2f s of it its own "
                        "work (election timeout from %.2f s): this manager is short of CPU",
                        gap, "leader" if self._isLeader() else "follower", cpu - last_cpu,
                        2 * limit)

    # -- a leader short of CPU asks its followers for patience (patience.py) --

    def _ask_patience(self) -> None:
        now = time.monotonic()
        wanted = patience.patience_for(self._gaps.get(now), self._SyncObj__conf.raftMinTimeout)
        if wanted == self._asked and (wanted == 0 or now - self._asked_at < 1.0):
            return  # said already (again each second while it is not 0: a lost message)
        self._asked, self._asked_at = wanted, now
        message = {"type": patience.MESSAGE, "term": self.raftCurrentTerm, "seconds": wanted}
        for node in self._SyncObj__otherNodes:
            self._SyncObj__transport.send(node, message)

    def _heed_patience(self, node: Any, message: dict[str, Any]) -> None:
        if message.get("term", -1) >= self.raftCurrentTerm:
            self._patience = (node, float(message.get("seconds", 0.0)))

    def _extend_deadline(self, node: Any) -> None:
        """After an AppendEntries pysyncobj took: the wait its leader asked for, on top."""
        leader, extra = self._patience
        if extra and node == leader and node == self._SyncObj__raftLeader \
                and not self._isLeader() and not self._SyncObj__transferInProgress:
            self._SyncObj__raftElectionDeadline += extra

    # -- waking the tick thread --

    def _applyCommand(self, command: bytes, callback: Any,  # noqa: N802 (pysyncobj's name)
                      commandType: int | None = None) -> None:  # noqa: N803
        super()._applyCommand(command, callback, commandType)
        if self._wakeup is not None:
            self._wakeup.wake()

    # -- sending as soon as there is something to send --

    def _checkCommandsToApply(self) -> None:  # noqa: N802 (pysyncobj's name)
        super()._checkCommandsToApply()
        if not self._isLeader():
            return
        if not self._SyncObj__otherNodes and self._wakeup is not None \
                and self._SyncObj__getCurrentLogIndex() > self.raftCommitIndex:
            # A lone leader commits at the start of a tick: the commands this tick just
            # appended would otherwise wait for the poll's timeout (autoTickPeriod).
            self._wakeup.wake()
        if (self._SyncObj__getCurrentLogIndex() > self._sent_index
                or self.raftCommitIndex > self._sent_commit):
            self._SyncObj__sendAppendEntries()

    def _SyncObj__sendAppendEntries(self) -> None:  # noqa: N802 (pysyncobj's private name)
        self._sent_index = self._SyncObj__getCurrentLogIndex()
        self._sent_commit = self.raftCommitIndex
        SyncObj._SyncObj__sendAppendEntries(self)

    # -- acknowledgements --

    def _SyncObj__onMessageReceived(self, node: Any,  # noqa: N802 (pysyncobj's private name)
                                    message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == patience.MESSAGE:
            self._heed_patience(node, message)
            return
        if kind == "append_entries" and message.get("term", -1) >= self.raftCurrentTerm:
            message = raft_append(message, self._SyncObj__getEntries,
                                  self._SyncObj__getCurrentLogIndex())
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            self._extend_deadline(node)
            return
        if not (kind == "next_node_idx" and message.get("success")
                and not message.get("reset")):
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            return
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex
        sent = next_index.get(node)
        SyncObj._SyncObj__onMessageReceived(self, node, message)
        # A success only confirms what the follower had when it answered; entries sent
        # after that are on their way and need no sending again.
        if sent is not None and self._isLeader() and next_index.get(node, 0) < sent:
            next_index[node] = sent
