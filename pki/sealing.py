"""Keys at rest: the unlock key of autolock, the key it derives (KEK) and sealed data.

A manager's key material on disk (its TLS key, the Raft data key and the Raft transport
secret) is sealed with the KEK while autolock is on, so a restarted manager can do nothing
until a user gives the unlock key again; the Raft data itself (journal commands and dumps)
is always sealed with the data key (DEK), which is why the DEK must never be in clear while
autolock is on. The unlock key itself is never written to disk: it lives in the cluster
object only, inside the (DEK-sealed) store. Pure functions; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

UNLOCK_PREFIX = "SWMKEY-1-"
# A protobuf message never starts with a zero byte (field number 0 is invalid), so sealed
# Raft data is told apart from the clear data of an older data root by this prefix.
SEALED = b"\x00shoal-sealed-1\x00"
_NONCE = 12


class WrongKey(Exception):
    """The data was not sealed with this key (or was changed since)."""


def new_key() -> bytes:
    return os.urandom(32)


def format_unlock_key(raw: bytes) -> str:
    """Docker's form: SWMKEY-1- and the key in base64 without padding."""
    return UNLOCK_PREFIX + base64.b64encode(raw).decode().rstrip("=")


def parse_unlock_key(text: str) -> bytes:
    text = text.strip()
    if not text.startswith(UNLOCK_PREFIX):
        raise WrongKey("not an unlock key (it starts with SWMKEY-1-)")
    body = text[len(UNLOCK_PREFIX):]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise WrongKey(f"the unlock key is not valid base64: {err}") from None
    if len(raw) != 32:
        raise WrongKey("the unlock key has the wrong length")
    return raw


def derive_kek(unlock_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"shoal manager key-encryption key").derive(unlock_key)


def seal(key: bytes, data: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return SEALED + nonce + ChaCha20Poly1305(key).encrypt(nonce, data, SEALED)


def is_sealed(data: bytes) -> bool:
    return data.startswith(SEALED)


def unseal(key: bytes, data: bytes) -> bytes:
    if not is_sealed(data):
        raise WrongKey("the data is not sealed")
    body = data[len(SEALED):]
    try:
        return ChaCha20Poly1305(key).decrypt(body[:_NONCE], body[_NONCE:], SEALED)
    except (InvalidTag, ValueError):
        raise WrongKey("the data was sealed with another key") from None


def seal_key_pem(key_pem: bytes, kek: bytes) -> bytes:
    """A private key as an encrypted PKCS#8 PEM (the clear PEM never touches the disk)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(kek))


def is_sealed_pem(pem: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY" in pem


def unseal_key_pem(sealed_pem: bytes, kek: bytes) -> bytes:
    try:
        key = serialization.load_pem_private_key(sealed_pem, password=kek)
    except (ValueError, TypeError):
        raise WrongKey("the TLS key was sealed with another key") from None
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
