"""pysyncobj's full dumps, written on a thread of their own and without compression.

pysyncobj compacts its log every DEFAULT_SNAPSHOT_INTERVAL entries by writing a full dump,
by default on its tick thread: the thread that also sends heartbeats and entries. It took
0.65 s at 20,000 tasks and 3.4 s at 100,000 (bench/dump_cost.py), with no append-entries
sent meanwhile, while followers stand for election after 0.5-1.0 s. Through pysyncobj's
custom serializer API (`serializer`, `serializeChecker`, `deserializer` in SyncObjConf) the
tick thread now only takes what the dump will hold (the store's immutable view: O(1)) and a
thread of ours encodes, seals and writes it, in pysyncobj's own format (gzip of a pickled
(state, last entry, previous entry, members)), so `journal.py`'s checks and every earlier
dump read as before. The dump replaces the old one only once it is complete and synced;
until then pysyncobj keeps the log entries it covers. gzip at level 0: ours are sealed with
the Raft data key (AES-GCM output), there is nothing to compress, and level 9 was most of
the time.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.pickle import dumps as pickle_dumps
from pysyncobj.pickle import loads as pickle_loads

log = logging.getLogger(__name__)

GZIP_LEVEL = 0
Encode = Callable[[], bytes]  # the consumer's state, made on the writer's thread


class DumpWriter:
    """One SyncObj's full dumps. `take` runs on the tick thread and returns what encodes
    the consumer's state later; `restore` loads a consumer state read back. `sync` is the
    SyncObj (set before its first tick): pysyncobj's own few fields go in the dump too."""

    def __init__(self, path: str, take: Callable[[], Encode],
                 restore: Callable[[bytes], None]) -> None:
        self.path = path
        self.take = take
        self.restore = restore
        self.sync: Any = None
        self._thread: threading.Thread | None = None
        self._outcome: int | None = None  # SUCCESS or FAILED once the thread ended

    # -- pysyncobj's callbacks, on its tick thread --

    def write(self, _tmp_file: str, raft_data: tuple[Any, ...]) -> None:
        """`serializer`: start a dump. pysyncobj then moves its own temporary file over the
        dump; we write none, so that fails harmlessly and the old dump stays whole until
        ours replaces it (`check` says when)."""
        if self._thread is not None:
            return
        own = {k: v for k, v in vars(self.sync).items()
               if k not in self.sync._SyncObj__properies}
        encode = self.take()
        self._outcome = None
        self._thread = threading.Thread(target=self._write, args=(own, encode, raft_data),
                                        name="raft-dump", daemon=True)
        self._thread.start()

    def check(self) -> int:
        """`serializeChecker`."""
        thread = self._thread
        if thread is None:
            return SERIALIZER_STATE.NOT_SERIALIZING  # type: ignore[no-any-return]
        if thread.is_alive():
            return SERIALIZER_STATE.SERIALIZING  # type: ignore[no-any-return]
        self._thread = None
        return self._outcome if self._outcome is not None \
            else SERIALIZER_STATE.FAILED  # type: ignore[no-any-return]

    def read(self, path: str) -> tuple[Any, ...]:
        """`deserializer`: load a dump (ours or pysyncobj's) into the SyncObj and the
        consumer; pysyncobj takes the entries and members it returns."""
        with open(path, "rb") as f:
            state, *raft_data = pickle_loads(gzip.decompress(f.read()))
        own, consumer_state = state[0], state[1]
        for key, value in own.items():
            setattr(self.sync, key, value)
        self.restore(consumer_state)
        return tuple(raft_data)

    # -- the writer's thread --

    def _write(self, own: dict[str, Any], encode: Encode, raft_data: tuple[Any, ...]) -> None:
        partial = self.path + ".writing"
        try:
            payload = pickle_dumps(([own, encode()], *raft_data))
            with open(partial, "wb") as f:
                with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=GZIP_LEVEL) as g:
                    g.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, self.path)
            self._outcome = SERIALIZER_STATE.SUCCESS
        except Exception:  # noqa: BLE001 (the dump is retried at the next compaction)
            log.exception("writing the Raft dump %s failed; the log is kept", self.path)
            self._outcome = SERIALIZER_STATE.FAILED

    def wait(self, timeout: float) -> None:
        """On close: let a dump being written finish (or give up on it after `timeout`)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
