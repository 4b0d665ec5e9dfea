"""pki/sealing.py: unlock keys, sealed data and sealed TLS keys; the journal check accepts
sealed Raft commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal
from pysyncobj.pickle import dumps

import pki
from manager.raft.journal import command_problem, commands_after
from pki import sealing
from proto import store_pb2


def test_unlock_key_round_trip_and_refusals() -> None:
    raw = sealing.new_key()
    text = sealing.format_unlock_key(raw)
    assert text.startswith("SWMKEY-1-") and "=" not in text and len(text) == 9 + 43
    assert sealing.parse_unlock_key(text + "\n") == raw
    for bad in ("SWMTKN-1-abc", "SWMKEY-1-!!!", "SWMKEY-1-" + "A" * 10):
        with pytest.raises(sealing.WrongKey):
            sealing.parse_unlock_key(bad)


def test_sealed_data_opens_only_with_its_key() -> None:
    key, other = sealing.new_key(), sealing.new_key()
    sealed = sealing.seal(key, b"store bytes")
    assert sealing.is_sealed(sealed) and b"store bytes" not in sealed
    assert sealing.unseal(key, sealed) == b"store bytes"
    with pytest.raises(sealing.WrongKey):
        sealing.unseal(other, sealed)
    with pytest.raises(sealing.WrongKey):
        sealing.unseal(key, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_tls_key_sealed_with_the_kek() -> None:
    pem = pki.key_pem(pki.new_key())
    kek = sealing.derive_kek(sealing.new_key())
    sealed = sealing.seal_key_pem(pem, kek)
    assert sealing.is_sealed_pem(sealed) and b"BEGIN PRIVATE KEY" not in sealed
    assert sealing.unseal_key_pem(sealed, kek) == pem
    with pytest.raises(sealing.WrongKey):
        sealing.unseal_key_pem(sealed, sealing.derive_kek(sealing.new_key()))


def test_journal_check_accepts_sealed_commands() -> None:
    sealed = sealing.seal(sealing.new_key(), b"\x08\x01")
    assert command_problem(b"\x00" + dumps((7, (sealed,)))) is None


def test_commands_after_reads_the_logged_tail(tmp_path: Path) -> None:
    """What a forced new cluster keeps: the regular entries after the last applied one."""
    journal = FileJournal(str(tmp_path / "journal.bin"))
    journal.add(b"\x01", 1, 1)  # no-op
    for i in range(2, 6):
        batch = store_pb2.StoreBatch(timestamp_ns=i).SerializeToString()
        journal.add(b"\x00" + dumps((7, (batch,))), i, 1)
    journal.flush()
    journal._destroy()
    tail = [store_pb2.StoreBatch.FromString(d).timestamp_ns
            for d in commands_after(str(tmp_path), 3)]
    assert tail == [4, 5]
    assert commands_after(str(tmp_path / "none"), 0) == []
