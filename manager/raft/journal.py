"""Checking a manager's Raft files before pysyncobj reads them, and setting damaged ones aside.

pysyncobj 0.3.17 trusts its files: a journal record cut short is applied as a truncated
command, which then fails in its tick thread every few milliseconds forever (the node looked
ready, served stale data and hung writes), and a full dump that does not load is logged and
ignored (the node would start from an empty store). So the files are checked first, and a
node whose files are damaged refuses to start.

journal.bin (pysyncobj's FileJournal, mmap'd, grown by doubling so its tail is zero padding):
    name (24 bytes) | version (8) | format version (4, =1) | end of the last record (4)
    then records: size (4) | index (8) | term (8) | command (size - 16) | size (4)
    a command is one type byte (regular, no-op, membership, version) and, except for a
    no-op, a pickle; a regular one carries our serialized StoreBatch.
journal.bin.meta: a pickled dict (current term, vote, commit index).
dump.bin: gzip of a pickled (state, last entry, previous entry, members) tuple whose state
    holds our StoreSnapshot bytes.
"""

from __future__ import annotations

import gzip
import os
import struct
import time
import zlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from pysyncobj.pickle import loads

from pki import sealing
from proto import store_pb2

JOURNAL = "journal.bin"
META = "journal.bin.meta"
DUMP = "dump.bin"
RAFT_FILES = (JOURNAL, META, DUMP, DUMP + ".tmp", META + ".tmp")

_NAME = b"PYSYNCOBJ"
_HEADER = 40  # name 24 + version 8 + format 4 + end of last record 4
_REGULAR, _NO_OP, _MEMBERSHIP, _VERSION = 0, 1, 2, 3


class RaftStateDamaged(Exception):
    """A Raft file of this manager can't be trusted; the node must not start on it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Record:
    index: int
    term: int
    command: bytes


def journal_problem(data: bytes) -> str | None:
    """What is wrong with a journal file's bytes (None: nothing); pure."""
    if len(data) < _HEADER:
        return f"the journal is {len(data)} bytes, shorter than its {_HEADER}-byte header"
    if data[:24].rstrip(b"\0") != _NAME:
        return "the journal does not start with pysyncobj's header"
    fmt, end = struct.unpack("<II", data[32:40])
    if fmt != 1:
        return f"the journal has format version {fmt}, expected 1"
    if end < _HEADER or end > len(data):
        return (f"the journal's records end at byte {end} but the file has {len(data)} bytes "
                "(it was cut short)")
    try:
        records = parse_records(data, end)
    except ValueError as err:
        return str(err)
    return _sequence_problem(records) or _commands_problem(records)


def parse_records(data: bytes, end: int) -> list[Record]:
    """The journal's records between the header and `end`; ValueError names a broken one."""
    records: list[Record] = []
    offset = _HEADER
    while offset < end:
        n = len(records) + 1
        if offset + 4 > end:
            raise ValueError(f"record {n} at byte {offset}: its size field is cut short")
        (size,) = struct.unpack_from("<I", data, offset)
        if size < 17 or offset + 8 + size > end:
            raise ValueError(f"record {n} at byte {offset}: size {size} runs past the end of "
                             f"the records at byte {end} (cut short or overwritten)")
        (trailer,) = struct.unpack_from("<I", data, offset + 4 + size)
        if trailer != size:
            raise ValueError(f"record {n} at byte {offset}: its two size fields differ "
                             f"({size} and {trailer})")
        index, term = struct.unpack_from("<QQ", data, offset + 4)
        records.append(Record(index, term, data[offset + 20:offset + 4 + size]))
        offset += size + 8
    return records


def _sequence_problem(records: list[Record]) -> str | None:
    for prev, rec in zip(records, records[1:], strict=False):
        if rec.index != prev.index + 1 or rec.term < prev.term:
            return (f"entry {rec.index} (term {rec.term}) does not follow entry {prev.index} "
                    f"(term {prev.term})")
    return None


def _commands_problem(records: list[Record]) -> str | None:
    for rec in records:
        problem = command_problem(rec.command)
        if problem is not None:
            return f"entry {rec.index} (term {rec.term}): {problem}"
    return None


def command_problem(command: bytes) -> str | None:
    """What is wrong with one journal command (None: it can be applied); pure."""
    kind = command[0]
    if kind == _NO_OP:
        return None
    if kind not in (_REGULAR, _MEMBERSHIP, _VERSION):
        return f"unknown command type {kind}"
    try:
        value = loads(command[1:])
    except Exception as err:  # any unpickling failure means the bytes are damaged
        return f"the command does not decode ({type(err).__name__}: {err})"
    if kind != _REGULAR:
        return None
    try:
        _func, args = value[0], value[1]
        if not sealing.is_sealed(args[0]):  # sealed data is checked when it is opened
            store_pb2.StoreBatch.FromString(args[0])
    except (DecodeError, TypeError, IndexError, KeyError) as err:
        return f"the store batch does not decode ({type(err).__name__}: {err})"
    return None


def commands_after(state_dir: str, index: int) -> list[bytes]:
    """The store batches (as proposed, maybe sealed) of the journal's regular entries after
    `index`: what this member logged but may not have seen committed."""
    try:
        with open(os.path.join(state_dir, JOURNAL), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    if journal_problem(data) is not None:
        return []
    (end,) = struct.unpack_from("<I", data, 36)
    return [loads(rec.command[1:])[1][0] for rec in parse_records(data, end)
            if rec.index > index and rec.command[0] == _REGULAR]


def meta_problem(data: bytes) -> str | None:
    try:
        meta = loads(data)
    except Exception as err:  # any unpickling failure means the bytes are damaged
        return f"the term/vote record does not decode ({type(err).__name__}: {err})"
    if not isinstance(meta, dict):
        return f"the term/vote record is a {type(meta).__name__}, not a dict"
    return None


def dump_problem(data: bytes) -> str | None:
    """What is wrong with a full dump's bytes (None: nothing); pure."""
    try:
        dump = loads(gzip.decompress(data))
        state, last, prev, members = dump
        snapshot = state[1]
        if not sealing.is_sealed(snapshot):
            store_pb2.StoreSnapshot.FromString(snapshot)
        _ = (last[1], last[2], prev[1], list(members))
    except (OSError, EOFError, zlib.error) as err:
        return f"the snapshot is not a complete gzip file ({type(err).__name__}: {err})"
    except Exception as err:  # unpickling or shape: the bytes are damaged either way
        return f"the snapshot does not decode ({type(err).__name__}: {err})"
    return None


_CHECKS = ((JOURNAL, journal_problem), (META, meta_problem), (DUMP, dump_problem))


def check_raft_state(state_dir: str) -> None:
    """Raise RaftStateDamaged for the first damaged Raft file in `state_dir` (absent: fine)."""
    for name, check in _CHECKS:
        path = os.path.join(state_dir, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        problem = check(data)
        if problem is not None:
            raise RaftStateDamaged(path, problem)


def set_aside(state_dir: str, now: float | None = None) -> tuple[str, list[str]]:
    """Move the Raft files (not the keys) into a new folder of `state_dir`, so the node
    starts with an empty log and catches up from the other managers; returns the folder and
    the files moved."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    aside = os.path.join(state_dir, f"set-aside-{stamp}")
    os.makedirs(aside, mode=0o700, exist_ok=True)
    moved = []
    for name in RAFT_FILES:
        path = os.path.join(state_dir, name)
        if os.path.exists(path):
            os.replace(path, os.path.join(aside, name))
            moved.append(name)
    return aside, moved
