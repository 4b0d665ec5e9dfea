"""Sealing secrets' data for the store: what the Raft log and snapshots hold is AES-256-GCM
ciphertext, never the secret's bytes.

The key is derived (HKDF-SHA256, salt = the cluster ID) from the root CA's private key.
Why that key material: it is the one secret every manager already holds and no worker ever
gets — it is in the cluster object, which the API never shows and no gRPC call returns
(workers only ever see the CA certificate), and it reaches a new manager only by Raft
replication to a member admitted over mTLS. A separate random key would need its own
distribution and storage on every manager with exactly the same reach, and it could be lost
apart from the CA key it lives next to. The derived key is never stored: each manager
derives it when it seals or opens a secret.

What this protects: the secret's bytes are nowhere in the managers' files, logs or API
answers, and an offline copy of the Raft files does not show them to a grep or a log
reader. What it does not: whoever holds ALL of a manager's Raft state holds the CA key too,
as with Docker without autolock (its Raft key sits in clear in the node's TLS key file);
autolock (the at-rest sealing of the Raft data with the unlock key) closes that. The
ciphertext is bound to the secret's ID (associated data), so it can't be moved to another
secret; a CA key rotation must re-seal secrets with the new key (Shoal has none yet).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proto import objects_pb2 as pb

MAGIC = b"SHS1"  # format of a sealed secret: MAGIC | nonce (12) | ciphertext with tag
NONCE_BYTES = 12
_INFO = b"shoal secrets data v1"


class SealError(Exception):
    """A sealed secret can't be opened (another cluster's key, or damaged)."""


def derive_key(cluster: pb.Cluster) -> bytes:
    ca_key = bytes(cluster.root_ca.ca_key_pem)
    if not ca_key:
        raise SealError("this node holds no root CA key: only managers seal secrets")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=cluster.id.encode(),
                info=_INFO).derive(ca_key)


def seal(key: bytes, secret_id: str, data: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, secret_id.encode())


def open_sealed(key: bytes, secret_id: str, sealed: bytes) -> bytes:
    if not sealed.startswith(MAGIC) or len(sealed) < len(MAGIC) + NONCE_BYTES + 16:
        raise SealError(f"secret {secret_id}: its stored data is not a sealed secret")
    nonce = sealed[len(MAGIC):len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, sealed[len(MAGIC) + NONCE_BYTES:],
                                   secret_id.encode())
    except InvalidTag:
        raise SealError(f"secret {secret_id}: its data does not open with this cluster's "
                        "key (damaged, or sealed by another cluster)") from None
