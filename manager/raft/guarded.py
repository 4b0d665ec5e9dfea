"""A SyncObj whose tick thread stops at its first failure instead of retrying forever.

pysyncobj's tick thread logs any exception and runs the same tick again 5 ms later; an entry
that can't be applied (a damaged journal) then fails every tick: 10,500 tracebacks in 80 s
while the node kept answering as if healthy. A replica that can't apply its log must not
serve, so the first failure stops Raft on this node and is reported once to `on_fatal`
(called on the tick thread), which stops the node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from manager.raft.dumps import DumpWriter
from manager.raft.prompt import PromptSyncObj

log = logging.getLogger(__name__)


class RaftFailed(Exception):
    """Raft stopped on this manager because its tick failed."""


class GuardedSyncObj(PromptSyncObj):  # type: ignore[misc]
    def __init__(self, *args: Any, on_fatal: Callable[[RaftFailed], None] | None = None,
                 dumps: DumpWriter | None = None, **kwargs: Any) -> None:
        # Set before SyncObj.__init__ so that pysyncobj counts them as its own properties
        # and leaves them out of its full dumps.
        self._on_fatal = on_fatal
        if dumps is not None:
            dumps.sync = self  # before the tick thread starts: it may load a dump at once
        self.failure: RaftFailed | None = None
        super().__init__(*args, **kwargs)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 (pysyncobj's names)
        if self.failure is not None:
            return
        try:
            super()._onTick(timeToWait)
        except Exception as err:
            self.failure = RaftFailed(f"Raft stopped on this manager: {type(err).__name__}: "
                                      f"{err}")
            log.critical("%s", self.failure, exc_info=True)
            self.destroy()  # the tick thread ends at its next turn
            if self._on_fatal is not None:
                self._on_fatal(self.failure)
