"""Full dumps written by a thread of ours (manager/raft/dumps.py), in pysyncobj's format:
gzip (level 0) of a pickled (state, last entry, previous entry, members)."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path
from typing import Any

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.pickle import dumps, loads
from pysyncobj.serializer import Serializer

from manager.raft.dumps import DumpWriter

STORE = b"a" * 1_000_000  # as a sealed store would be, but compressible: level 0 shows
ENTRIES = ((b"cmd", 7, 2), (b"cmd", 6, 2), {"member"})


class Sync:
    """Stands in for the SyncObj's own fields: pysyncobj dumps those not in __properies."""

    def __init__(self) -> None:
        self._SyncObj__properies = {"_SyncObj__properies", "busy"}
        self.busy = 1
        self._SyncObj__enabledCodeVersion = 3


def writer(path: Path, encode_gate: threading.Event | None = None,
           restored: list[bytes] | None = None) -> DumpWriter:
    def take() -> Any:
        def encode() -> bytes:
            if encode_gate is not None:
                encode_gate.wait(10)
            return STORE
        return encode
    w = DumpWriter(str(path), take, (restored if restored is not None else []).append)
    w.sync = Sync()
    return w


def test_a_dump_is_written_by_its_thread_and_replaces_the_old_one_when_whole(
        tmp_path: Path) -> None:
    path = tmp_path / "dump.bin"
    path.write_bytes(b"the old dump")
    gate = threading.Event()
    w = writer(path, gate)
    assert w.check() == SERIALIZER_STATE.NOT_SERIALIZING
    w.write(str(path) + ".tmp", ENTRIES)  # returns at once: the encoding waits on the gate
    assert w.check() == SERIALIZER_STATE.SERIALIZING
    assert path.read_bytes() == b"the old dump"  # untouched until ours is complete
    gate.set()
    w.wait(10)
    assert w.check() == SERIALIZER_STATE.SUCCESS
    assert w.check() == SERIALIZER_STATE.NOT_SERIALIZING
    assert path.stat().st_size > len(STORE)  # stored, not compressed
    # pysyncobj's own reader, and journal.py's, read it as theirs
    state, *raft = loads(gzip.decompress(path.read_bytes()))
    assert state == [{"_SyncObj__enabledCodeVersion": 3}, STORE]
    assert tuple(raft) == ENTRIES
    assert Serializer(str(path), 2 ** 16, False, None, None, None).deserialize()[1:] == ENTRIES


def test_a_dump_that_cannot_be_written_fails_and_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "dump.bin"
    w = writer(path)
    w.write(str(path) + ".tmp", ENTRIES)
    w.wait(10)
    assert w.check() == SERIALIZER_STATE.FAILED
    assert not path.exists()


def test_reading_a_dump_pysyncobj_wrote_restores_its_fields_and_the_store(
        tmp_path: Path) -> None:
    path = tmp_path / "dump.bin"
    own = {"_SyncObj__enabledCodeVersion": 5}
    path.write_bytes(gzip.compress(dumps(([own, STORE], *ENTRIES)), compresslevel=9))
    restored: list[bytes] = []
    w = writer(path, restored=restored)
    assert w.read(str(path)) == ENTRIES
    assert restored == [STORE]
    assert w.sync._SyncObj__enabledCodeVersion == 5
