"""The checks of a manager's Raft files, on files pysyncobj itself wrote."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal
from pysyncobj.pickle import dumps

from manager.raft.journal import (
    RaftStateDamaged,
    check_raft_state,
    command_problem,
    dump_problem,
    journal_problem,
    set_aside,
)
from proto import store_pb2


def regular(batch: store_pb2.StoreBatch) -> bytes:
    # what a @replicated call of apply_batch(data) becomes in the journal
    return b"\x00" + dumps((7, (batch.SerializeToString(),)))


def write_journal(path: Path, entries: int = 5) -> None:
    journal = FileJournal(str(path))
    journal.add(b"\x01", 1, 1)  # no-op
    for i in range(2, entries + 1):
        journal.add(regular(store_pb2.StoreBatch(timestamp_ns=i)), i, 1)
    journal.flush()
    journal._destroy()


def records_end(path: Path) -> int:
    return int(struct.unpack("<I", path.read_bytes()[36:40])[0])


def test_a_journal_pysyncobj_wrote_is_sound(tmp_path: Path) -> None:
    write_journal(tmp_path / "journal.bin")
    assert journal_problem((tmp_path / "journal.bin").read_bytes()) is None
    check_raft_state(str(tmp_path))


def test_cutting_the_zero_padding_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    write_journal(path)
    os.truncate(path, path.stat().st_size - 7)  # pysyncobj grows the file by doubling
    assert records_end(path) < path.stat().st_size
    check_raft_state(str(tmp_path))


def test_a_journal_cut_into_its_records_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "journal.bin"
    write_journal(path)
    os.truncate(path, records_end(path) - 7)
    with pytest.raises(RaftStateDamaged) as err:
        check_raft_state(str(tmp_path))
    assert err.value.path == str(path) and "cut short" in err.value.problem


def test_overwritten_bytes_are_found(tmp_path: Path) -> None:
    write_journal(tmp_path / "journal.bin")
    sound = (tmp_path / "journal.bin").read_bytes()
    end = struct.unpack("<I", sound[36:40])[0]
    data = bytearray(sound)
    data[end - 2] ^= 0xFF  # the last record's trailing size
    assert "size fields differ" in (journal_problem(bytes(data)) or "")
    data = bytearray(sound)
    data[:9] = b"XXXXXXXXX"
    assert "header" in (journal_problem(bytes(data)) or "")
    assert "shorter than" in (journal_problem(b"PYSYNCOBJ") or "")


def test_commands_that_do_not_decode_are_found() -> None:
    good = regular(store_pb2.StoreBatch(timestamp_ns=1))
    assert command_problem(good) is None
    assert command_problem(b"\x01") is None
    assert "does not decode" in (command_problem(good[:-3]) or "")
    assert "unknown command type" in (command_problem(b"\x09abc") or "")
    assert "store batch" in (command_problem(b"\x00" + dumps((7, (b"\xff\xff",)))) or "")


def test_a_damaged_term_record_or_snapshot_is_found(tmp_path: Path) -> None:
    (tmp_path / "journal.bin.meta").write_bytes(b"\x80\x04garbage")
    with pytest.raises(RaftStateDamaged) as err:
        check_raft_state(str(tmp_path))
    assert err.value.path.endswith("journal.bin.meta")
    entry = (b"\x01", 1, 1)
    dump = gzip.compress(dumps(([{}, store_pb2.StoreSnapshot().SerializeToString()],
                                entry, entry, {"198.18.0.2:2379"})))
    assert dump_problem(dump) is None
    assert "gzip" in (dump_problem(dump[:-7]) or "")
    assert "does not decode" in (dump_problem(gzip.compress(b"not a pickle")) or "")


def test_set_aside_keeps_the_secret(tmp_path: Path) -> None:
    write_journal(tmp_path / "journal.bin")
    (tmp_path / "journal.bin.meta").write_bytes(dumps({}))
    (tmp_path / "secret").write_text("s3cret")
    aside, moved = set_aside(str(tmp_path), now=0.0)
    assert moved == ["journal.bin", "journal.bin.meta"]
    assert sorted(os.listdir(aside)) == moved
    assert (tmp_path / "secret").read_text() == "s3cret"
    check_raft_state(str(tmp_path))
