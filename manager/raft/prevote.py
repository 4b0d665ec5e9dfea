"""Pre-vote (Raft thesis §9.6): a member whose election timer ran out first asks whether it
could win, and stands (raising its term) only when a majority says yes.

pysyncobj stands at once. A member that fell behind on its own — a manager whose process
got no CPU for a moment, or whose tick thread wrote a dump — raised its term and sent vote
requests with it, and the leader, still heard by the other member, stepped down on seeing
the higher term: a lapse of leadership (controllers stopped, writes refused) and a new
epoch. With 3 managers and 2,000 simulated nodes on 2 cores that happened 3 times in one
run, every time won back by the same leader (bench/scale_sim.py; 15 times in 2 minutes
before the dumps were made cheaper).

Here a member grants a pre-vote only if it has heard from no leader for the election
timeout's minimum and the asker's log is at least as up to date as its own; a leader never
grants one. Nothing changes on either side until a majority granted; then the asker stands
as before. An election the leader asked for (leadership transfer) skips the question.
"""

from __future__ import annotations

import time
from typing import Any

from pysyncobj import SyncObj

PRE_VOTE = "shoal_pre_vote"
PRE_VOTE_GRANTED = "shoal_pre_vote_granted"
ASK_AGAIN = 0.2  # of the election timeout's minimum: a refused asker asks again after that


class PreVoteSyncObj(SyncObj):  # type: ignore[misc]
    _SyncObj__raftElectionDeadline: float  # pysyncobj's: when this member stands

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before SyncObj.__init__: pysyncobj then counts them as its own and leaves them out
        # of its dumps.
        self._leader_heard_at = 0.0
        self._asking_for: int | None = None  # the term a pre-vote round asks for
        self._granted = 0
        self._may_stand = False
        super().__init__(*args, **kwargs)

    # -- asking --

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802,N803 (pysyncobj's names)
        self._ask_before_standing()
        super()._onTick(timeToWait)

    def _ask_before_standing(self) -> None:
        """Runs before pysyncobj's tick, which stands once the election deadline passed."""
        if self._SyncObj__selfNode is None or self._isLeader():
            return
        if self._SyncObj__raftElectionDeadline >= time.monotonic():
            return
        if self._may_stand or self._SyncObj__transferInProgress \
                or not self._SyncObj__otherNodes:
            self._may_stand = False  # a majority granted, the leader asked, or alone
            return
        if not self._SyncObj__connectedToAnyone():
            return  # pysyncobj does not stand either
        # Not yet: pysyncobj's deadline moves on while the others answer. Asked again soon
        # if they refuse: a member that heard the leader a little later than this one
        # refuses for that little while (under load, a whole timeout more kept a paused
        # leader's followers from electing within 2 s).
        self._SyncObj__raftElectionDeadline = \
            time.monotonic() + self._SyncObj__conf.raftMinTimeout * ASK_AGAIN
        self._asking_for = self.raftCurrentTerm + 1
        self._granted = 1  # its own
        for node in self._SyncObj__otherNodes:
            self._SyncObj__transport.send(node, {
                "type": PRE_VOTE, "term": self._asking_for,
                "last_log_index": self._SyncObj__getCurrentLogIndex(),
                "last_log_term": self._SyncObj__getCurrentLogTerm()})

    def _count_grant(self, message: dict[str, Any]) -> None:
        if message.get("term") != self._asking_for or self._isLeader():
            return
        self._granted += 1
        if self._granted > (len(self._SyncObj__otherNodes) + 1) / 2:
            self._asking_for = None
            self._may_stand = True
            self._SyncObj__raftElectionDeadline = 0.0  # stand at the next tick

    # -- answering --

    def _would_grant(self, message: dict[str, Any]) -> bool:
        if self._isLeader() or message.get("term", 0) <= self.raftCurrentTerm:
            return False
        minimum = self._SyncObj__conf.raftMinTimeout
        if time.monotonic() - self._leader_heard_at < minimum:
            return False  # a leader is alive: the asker is the one behind
        ours = (self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex())
        return (message.get("last_log_term", 0), message.get("last_log_index", 0)) >= ours

    def _SyncObj__onMessageReceived(self, node: Any,  # noqa: N802 (pysyncobj's private name)
                                    message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == PRE_VOTE:
            if self._would_grant(message):
                self._SyncObj__transport.send(node, {"type": PRE_VOTE_GRANTED,
                                                     "term": message["term"]})
            return
        if kind == PRE_VOTE_GRANTED:
            self._count_grant(message)
            return
        if kind == "append_entries" and message.get("term", -1) >= self.raftCurrentTerm:
            self._leader_heard_at = time.monotonic()
            self._asking_for = None
            self._may_stand = False
        super()._SyncObj__onMessageReceived(node, message)
