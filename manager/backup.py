"""Backups of the store (`shoal swarm backup`, `GET /swarm/backup`, `shoald --restore`).

A backup is one file:

    magic "SHOALBAK" (8 bytes) | header length (4, big-endian) | header (JSON, UTF-8)
    | payload | SHA-256 of everything before it (32 bytes)

The header says what the file is without opening it: format version, cluster ID, when and
on which manager it was taken, the store version it holds, and whether the payload is
sealed. The payload is the store's protobuf `StoreSnapshot`, taken at one store version
(one applied Raft entry: the store swaps whole versions, so the snapshot is consistent).
While autolock is on it is sealed (pki/sealing.py) with the key-encryption key derived from
the unlock key, so restoring it needs the unlock key. Without autolock the payload is in
clear: it holds the root CA key and everything the managers hold, so the file must be kept
as carefully as a manager's data root (Docker's backup of /var/lib/docker/swarm is the same).

The checksum catches a truncated or damaged file before anything is decoded; the encoding
and decoding here are pure.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass

from google.protobuf.message import DecodeError

from pki import sealing
from proto import objects_pb2 as pb
from proto import store_pb2

MAGIC = b"SHOALBAK"
FORMAT_VERSION = 1
_DIGEST = 32
_MIN_SIZE = len(MAGIC) + 4 + _DIGEST
MAX_HEADER = 64 * 1024


class BackupInvalid(Exception):
    """The file is not a backup this Shoal can restore (damaged, truncated, or foreign)."""


@dataclass(frozen=True)
class BackupHeader:
    cluster_id: str
    created_at: str  # RFC 3339, UTC
    node_id: str  # the manager it was taken on
    store_version: int
    sealed: bool
    format: int = FORMAT_VERSION


def encode(header: BackupHeader, payload: bytes) -> bytes:
    head = json.dumps(asdict(header), sort_keys=True).encode()
    body = MAGIC + struct.pack(">I", len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def decode(data: bytes) -> tuple[BackupHeader, bytes]:
    """The header and the (maybe sealed) payload; BackupInvalid says what is wrong."""
    if len(data) < _MIN_SIZE or not data.startswith(MAGIC):
        raise BackupInvalid("not a Shoal backup (it does not start with SHOALBAK): use a file "
                            "written by `shoal swarm backup`")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise BackupInvalid(f"the backup is damaged or truncated ({len(data)} bytes; its "
                            "SHA-256 checksum does not match): use another copy")
    (size,) = struct.unpack_from(">I", body, len(MAGIC))
    start = len(MAGIC) + 4
    if size > min(MAX_HEADER, len(body) - start):
        raise BackupInvalid(f"the backup's header length {size} is out of range")
    try:
        fields = json.loads(body[start:start + size])
        header = BackupHeader(**fields)
    except (ValueError, TypeError) as err:
        raise BackupInvalid(f"the backup's header does not decode: {err}") from None
    if header.format != FORMAT_VERSION:
        raise BackupInvalid(f"the backup has format version {header.format}; this Shoal "
                            f"reads version {FORMAT_VERSION}")
    return header, body[start + size:]


def open_payload(header: BackupHeader, payload: bytes, unlock_key: str | None) -> bytes:
    """The StoreSnapshot bytes, checked. A sealed backup needs the unlock key it was taken
    under (sealing.WrongKey when it is missing or wrong)."""
    if header.sealed:
        if not unlock_key:
            raise sealing.WrongKey("the backup is encrypted (autolock was on): give the "
                                   "unlock key it was taken with (--unlock-key)")
        kek = sealing.derive_kek(sealing.parse_unlock_key(unlock_key))
        payload = sealing.unseal(kek, payload)
    cluster = cluster_of(payload)
    if cluster.id != header.cluster_id:
        raise BackupInvalid(f"the backup's header names cluster {header.cluster_id} but its "
                            f"store holds cluster {cluster.id}")
    return payload


def cluster_of(snapshot: bytes) -> pb.Cluster:
    """The one Cluster object of a StoreSnapshot (BackupInvalid if it does not decode)."""
    try:
        snap = store_pb2.StoreSnapshot.FromString(snapshot)
    except DecodeError as err:
        raise BackupInvalid(f"the backup's store does not decode: {err}") from None
    clusters = [o.cluster for o in snap.objects if o.WhichOneof("kind") == "cluster"]
    if len(clusters) != 1:
        raise BackupInvalid(f"the backup's store holds {len(clusters)} cluster objects, not 1")
    return clusters[0]


def make(snapshot: bytes, node_id: str, created_at: str) -> bytes:
    """A backup of a store snapshot taken on manager `node_id`: sealed with the unlock key's
    KEK while the snapshot's cluster has autolock on. The cluster and store version come
    from the snapshot itself, so the header describes exactly what the payload holds."""
    cluster = cluster_of(snapshot)
    kek = None
    if cluster.spec.encryption_config.auto_lock_managers and cluster.unlock_key:
        kek = sealing.derive_kek(cluster.unlock_key)
    payload = sealing.seal(kek, snapshot) if kek else snapshot
    version = store_pb2.StoreSnapshot.FromString(snapshot).version
    header = BackupHeader(cluster.id, created_at, node_id, version, kek is not None)
    return encode(header, payload)


def for_new_cluster(snapshot: bytes, raft_secret: str) -> bytes:
    """The snapshot a restored one-manager cluster starts from: the backup's store with a
    new Raft transport secret (a new Raft group: a manager of the old one still running
    somewhere can't talk to it) and the leadership epoch counted from 0 again."""
    snap = store_pb2.StoreSnapshot.FromString(snapshot)
    for obj in snap.objects:
        if obj.WhichOneof("kind") == "cluster":
            obj.cluster.raft_secret = raft_secret
    snap.epoch = 0
    return snap.SerializeToString()
