"""manager/backup.py: the backup file format (encode/decode, sealing, damage detection) and
shoal/restore.py's checks before a restore writes anything."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import pytest

from manager import backup
from manager.ca.authority import RootCA
from manager.store.memory import MemoryStore, wrap
from pki import sealing
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal import restore

WHEN = "2025-01-02T03:04:05Z"
SECRET_DATA = b"the secret's sealed bytes stand in here"


def store_snapshot(autolock: bool = False) -> tuple[bytes, pb.Cluster]:
    """A store with a cluster (CA, Raft secret, maybe an unlock key), a service and a
    secret, as a StoreSnapshot."""
    cluster = pb.Cluster(id="c" * 25, root_ca=RootCA.create().to_proto(),
                         raft_secret="old-raft-secret", raft_dek=sealing.new_key())
    if autolock:
        cluster.spec.encryption_config.auto_lock_managers = True
        cluster.unlock_key = sealing.new_key()
    service = pb.Service(id="s" * 25)
    service.spec.annotations.name = "web"
    secret = pb.Secret(id="x" * 25)
    secret.spec.annotations.name = "pw"
    secret.spec.data = SECRET_DATA
    store = MemoryStore()
    batch = store_pb2.StoreBatch(timestamp_ns=1, new_epoch=7)
    for obj in (cluster, service, secret):
        batch.actions.append(store_pb2.StoreAction(kind=store_pb2.CREATE, object=wrap(obj)))
    assert store.apply(batch).error is None
    return store.snapshot(), cluster


def test_a_clear_backup_round_trips_with_its_header() -> None:
    snapshot, cluster = store_snapshot()
    data = backup.make(snapshot, "n" * 25, WHEN)
    header, payload = backup.decode(data)
    assert header == backup.BackupHeader(cluster.id, WHEN, "n" * 25, 1, False)
    assert backup.open_payload(header, payload, None) == snapshot
    assert data.startswith(b"SHOALBAK")
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_an_autolocked_backup_is_sealed_and_needs_its_unlock_key() -> None:
    snapshot, cluster = store_snapshot(autolock=True)
    data = backup.make(snapshot, "n" * 25, WHEN)
    header, payload = backup.decode(data)
    assert header.sealed
    # nothing of the store is in clear: not the CA key, not the Raft secret, not a secret
    for clear in (cluster.root_ca.ca_key_pem, b"old-raft-secret", SECRET_DATA, b"web"):
        assert clear not in data
    key = sealing.format_unlock_key(cluster.unlock_key)
    assert backup.open_payload(header, payload, key) == snapshot
    with pytest.raises(sealing.WrongKey, match="give the unlock key"):
        backup.open_payload(header, payload, None)
    with pytest.raises(sealing.WrongKey):
        backup.open_payload(header, payload, sealing.format_unlock_key(sealing.new_key()))


@pytest.mark.parametrize("damage", ["truncated", "one byte", "header", "appended"])
def test_a_damaged_or_truncated_backup_is_refused(damage: str) -> None:
    data = bytearray(backup.make(store_snapshot()[0], "n" * 25, WHEN))
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "one byte":
        data[len(data) // 2] ^= 0x01
    elif damage == "header":
        data[20] ^= 0x20
    else:
        data += b"\0"
    with pytest.raises(backup.BackupInvalid, match="damaged or truncated"):
        backup.decode(bytes(data))


@pytest.mark.parametrize("data", [b"", b"SHOALBAK", b"\x1f\x8b" + b"\0" * 100])
def test_what_is_not_a_backup_is_refused(data: bytes) -> None:
    with pytest.raises(backup.BackupInvalid, match="not a Shoal backup"):
        backup.decode(data)


def test_another_format_version_is_refused() -> None:
    header = dataclasses.replace(backup.BackupHeader("c", WHEN, "n", 1, False), format=2)
    with pytest.raises(backup.BackupInvalid, match="format version 2"):
        backup.decode(backup.encode(header, b""))


def test_a_header_that_does_not_decode_is_refused() -> None:
    body = backup.MAGIC + struct.pack(">I", 3) + b"{x}" + b"payload"
    with pytest.raises(backup.BackupInvalid, match="header does not decode"):
        backup.decode(body + hashlib.sha256(body).digest())
    body = backup.MAGIC + struct.pack(">I", 1 << 30)
    with pytest.raises(backup.BackupInvalid, match="header length"):
        backup.decode(body + hashlib.sha256(body).digest())


def test_a_header_naming_another_cluster_is_refused() -> None:
    snapshot, _ = store_snapshot()
    header = backup.BackupHeader("other", WHEN, "n", 1, False)
    decoded, payload = backup.decode(backup.encode(header, snapshot))
    with pytest.raises(backup.BackupInvalid, match="names cluster other"):
        backup.open_payload(decoded, payload, None)
    with pytest.raises(backup.BackupInvalid, match="does not decode"):
        backup.open_payload(decoded, b"\xff\xff\xff", None)


def test_a_restored_cluster_gets_a_new_raft_secret_and_epoch_and_keeps_the_rest() -> None:
    snapshot, cluster = store_snapshot()
    restored = store_pb2.StoreSnapshot.FromString(backup.for_new_cluster(snapshot, "new"))
    before = store_pb2.StoreSnapshot.FromString(snapshot)
    assert before.epoch == 7 and restored.epoch == 0
    new_cluster = backup.cluster_of(restored.SerializeToString())
    assert new_cluster.raft_secret == "new"
    assert new_cluster.root_ca == cluster.root_ca  # same CA and join tokens: workers rejoin
    assert len(restored.objects) == len(before.objects) == 3
    assert restored.version == before.version


def test_restore_refuses_a_data_root_that_is_not_empty(tmp_path: Path) -> None:
    assert restore.data_root_problem(str(tmp_path / "absent")) is None
    assert restore.data_root_problem(str(tmp_path)) is None
    (tmp_path / "state.json").write_text(json.dumps({}))
    problem = restore.data_root_problem(str(tmp_path))
    assert problem is not None and "is not empty (state.json)" in problem


def test_restore_names_the_file_and_the_problem(tmp_path: Path) -> None:
    snapshot, cluster = store_snapshot(autolock=True)
    path = tmp_path / "b.bin"
    data = backup.make(snapshot, "n", WHEN)
    path.write_bytes(data[:-5])
    with pytest.raises(restore.RestoreRefused, match=f"{path}: the backup is damaged"):
        restore.open_backup(str(path), None)
    path.write_bytes(data)
    with pytest.raises(restore.RestoreRefused, match="encrypted .* --unlock-key"):
        restore.open_backup(str(path), None)
    with pytest.raises(restore.RestoreRefused, match="invalid unlock key"):
        restore.open_backup(str(path), sealing.format_unlock_key(sealing.new_key()))
    key = sealing.format_unlock_key(cluster.unlock_key)
    assert restore.open_backup(str(path), None, prompt=lambda: key) == snapshot
    with pytest.raises(restore.RestoreRefused, match="cannot read the backup"):
        restore.open_backup(str(tmp_path / "missing.bin"), None)
