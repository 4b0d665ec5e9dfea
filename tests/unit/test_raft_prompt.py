"""What manager/raft/prompt.py relies on inside pysyncobj. Each check names the internal it
pins: if an upgrade of pysyncobj changes one, re-read its syncobj.py before changing these."""

from __future__ import annotations

import inspect
import re
from typing import Any

from pysyncobj import SyncObj
from pysyncobj.version import VERSION

from manager.raft.guarded import GuardedSyncObj
from manager.raft.prompt import PromptSyncObj, raft_append


def source(name: str) -> str:
    return inspect.getsource(getattr(SyncObj, name))


def test_the_pysyncobj_that_was_read() -> None:
    assert VERSION == "0.3.17"


def test_the_private_members_overridden_or_called_exist() -> None:
    for name in ("_applyCommand", "_checkCommandsToApply", "_doDestroy", "_isLeader",
                 "_SyncObj__sendAppendEntries", "_SyncObj__onMessageReceived",
                 "_SyncObj__getCurrentLogIndex"):
        assert callable(getattr(SyncObj, name)), name
    assert isinstance(SyncObj.raftCommitIndex, property)
    init = source("__init__")
    assert "self._poller = createPoller(" in init
    assert "self.__raftNextIndex = {}" in init
    # pysyncobj binds its message handler by attribute, so the subclass's override is used.
    assert "setOnMessageReceivedCallback(self.__onMessageReceived)" in init


def test_our_overrides_take_the_mangled_names() -> None:
    for name in ("_SyncObj__sendAppendEntries", "_SyncObj__onMessageReceived"):
        assert getattr(GuardedSyncObj, name) is getattr(PromptSyncObj, name)
        assert getattr(PromptSyncObj, name) is not getattr(SyncObj, name)


def test_a_tick_moves_commands_into_the_log_after_committing_and_before_polling() -> None:
    tick = source("_onTick")
    order = ["self.__raftCommitIndex = nextCommitIdx",
             "needSendAppendEntries = self.__applyLogEntries()",
             "self._checkCommandsToApply()", "self._poller.poll(timeToWait)"]
    positions = [tick.index(step) for step in order]
    assert positions == sorted(positions)
    # The timer still sends (heartbeats), and any send pushes the timer back.
    assert "monotonicTime() > self.__newAppendEntriesTime" in tick
    send = source("_SyncObj__sendAppendEntries")
    assert "self.__newAppendEntriesTime = monotonicTime() +" in send
    assert "'commit_index': self.__raftCommitIndex" in send


def test_a_tick_checks_the_election_deadline_before_it_polls() -> None:
    tick = source("_onTick")
    assert tick.index("if self.__raftElectionDeadline < monotonicTime()") \
        < tick.index("self._poller.poll(timeToWait)")
    assert "self.__raftElectionDeadline = monotonicTime() + self.__generateRaftTimeout()" \
        in source("_SyncObj__onMessageReceived")


def test_what_the_patience_of_followers_relies_on() -> None:
    init = source("__init__")
    for member in ("self.__otherNodes = set()", "self.__transferInProgress = False",
                   "self.__transport = transport"):
        assert member in init, member
    handler = source("_SyncObj__onMessageReceived")
    # The deadline is set (and our patience added) only outside a leadership transfer.
    assert "if not self.__transferInProgress:\n" in handler
    assert "self.__raftLeader = node" in handler


def test_commands_are_queued_then_taken_on_the_tick_thread() -> None:
    apply = source("_applyCommand")
    assert "self.__commandsQueue.put_nowait(" in apply
    check = source("_checkCommandsToApply")
    assert "self.__commandsQueue.get_nowait()" in check
    assert "self.__raftLog.add(command, idx, term)" in check
    # Forwarded commands reach the leader's queue through _applyCommand too.
    handler = source("_SyncObj__onMessageReceived")
    assert "self._applyCommand(message['command'], (node, message['request_id']))" in handler


def test_a_success_acknowledgement_sets_next_index_back() -> None:
    """The behaviour PromptSyncObj undoes: a late success moves nextIndex back over entries
    already sent, so they are sent again and followers drop and re-append them."""
    handler = source("_SyncObj__onMessageReceived")
    ack = handler[handler.index("if message['type'] == 'next_node_idx':"):]
    assert re.search(r"if success:\s+if self.__raftMatchIndex\[node\] < currentNodeIdx:\s+"
                     r"self.__raftMatchIndex\[node\] = currentNodeIdx\s+"
                     r"self.__raftNextIndex\[node\] = nextNodeIdx", ack)


def test_the_append_entries_handler_deletes_after_the_previous_index() -> None:
    """raft_append relies on this: pysyncobj deletes every entry after prevLogIdx whenever
    the follower has more, then appends the message's entries."""
    handler = source("_SyncObj__onMessageReceived")
    assert "self.__deleteEntriesFrom(prevLogIdx + 1)" in handler
    assert "prevEntries = self.__getEntries(prevLogIdx)" in handler
    assert callable(SyncObj._SyncObj__getEntries)


def log(*terms: int) -> list[tuple[bytes, int, int]]:
    """A follower's log: entry i (from 1) of term terms[i - 1]."""
    return [(b"c", i + 1, term) for i, term in enumerate(terms)]


def append(prev: int, prev_term: int, term: int, *entries: tuple[int, int]) -> dict[str, Any]:
    return {"type": "append_entries", "term": term, "commit_index": 0, "prevLogIdx": prev,
            "prevLogTerm": prev_term, "entries": [(b"c", i, t) for i, t in entries]}


def apply_as_pysyncobj(ours: list[tuple[bytes, int, int]], message: dict[str, Any]
                       ) -> list[tuple[bytes, int, int]]:
    """What pysyncobj's handler does with an accepted message (the pinned lines above)."""
    kept = [e for e in ours if e[1] <= message["prevLogIdx"]]
    return kept + list(message["entries"])


def follow(ours: list[tuple[bytes, int, int]], message: dict[str, Any]
           ) -> list[tuple[bytes, int, int]]:
    rewritten = raft_append(message, lambda i: [e for e in ours if e[1] >= i], ours[-1][1])
    return apply_as_pysyncobj(ours, rewritten)


def test_a_follower_keeps_the_entries_it_already_has() -> None:
    ours = log(1, 1, 2, 2, 2)
    # A re-sent message for 3-4 (the leader, term 2, sent 5 since): 5 stays.
    assert follow(ours, append(2, 1, 2, (3, 2), (4, 2))) == ours
    # An empty heartbeat from an older next index: nothing is deleted.
    assert follow(ours, append(3, 2, 2)) == ours


def test_a_follower_deletes_from_the_first_conflict_only() -> None:
    ours = log(1, 1, 2, 2, 2)
    got = follow(ours, append(2, 1, 3, (3, 2), (4, 3)))  # 4 and 5 are of a lost term
    assert got == log(1, 1, 2, 3)
    # New entries after the ones it has are appended, none twice.
    assert follow(log(1, 1, 2), append(2, 1, 2, (3, 2), (4, 2))) == log(1, 1, 2, 2)


def test_entries_of_an_earlier_term_after_the_message_are_not_kept() -> None:
    """The new leader (term 3) may not have entries 4-5 of term 2: pysyncobj's handling
    (drop them, they come again if the leader has them) stays."""
    ours = log(1, 1, 2, 2, 2)
    message = append(2, 1, 3, (3, 2))
    assert raft_append(message, lambda i: [e for e in ours if e[1] >= i], 5) is message

