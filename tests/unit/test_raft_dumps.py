"""pysyncobj's full dumps are written without compression (manager/raft/dumps.py), in the
format pysyncobj and our journal check read: gzip of a pickle."""

from __future__ import annotations

import gzip
from pathlib import Path

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.pickle import dumps, loads
from pysyncobj.serializer import Serializer

import manager.raft.replica  # noqa: F401 (installs the uncompressed dumps)

STATE = ({"store": b"a" * 1_000_000}, (b"cmd", 7, 2), (b"cmd", 6, 2), set())


def serializer(path: Path) -> Serializer:
    return Serializer(str(path), 2 ** 16, False, None, None, None)


def test_a_dump_is_stored_not_compressed_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "dump.bin"
    dumper = serializer(path)
    dumper.serialize(STATE, 7)
    assert dumper.checkSerializing()[0] == SERIALIZER_STATE.SUCCESS
    # 1 MB of one byte: gzip at any level above 0 makes it a few kB
    assert path.stat().st_size > 1_000_000
    assert serializer(path).deserialize() == STATE
    assert loads(gzip.decompress(path.read_bytes())) == STATE  # as journal.py reads it


def test_a_compressed_dump_of_before_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "dump.bin"
    path.write_bytes(gzip.compress(dumps(STATE), compresslevel=9))
    assert serializer(path).deserialize() == STATE
