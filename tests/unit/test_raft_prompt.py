"""What manager/raft/prompt.py relies on inside pysyncobj. Each check names the internal it
pins: if an upgrade of pysyncobj changes one, re-read its syncobj.py before changing these."""

from __future__ import annotations

import inspect
import re

from pysyncobj import SyncObj
from pysyncobj.version import VERSION

from manager.raft.guarded import GuardedSyncObj
from manager.raft.prompt import PromptSyncObj


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
