"""The node's WireGuard keys: X25519 pairs made on the node, the private key kept in a 0600
file and never sent anywhere (only the public key goes through the store), and when a pair
is due for rotation."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_key: str  # base64, wg format
    public_key: str
    created_ns: int


def new_key_pair(now_ns: int) -> KeyPair:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return KeyPair(base64.b64encode(private).decode(), public_key_of(private), now_ns)


def public_key_of(private: bytes) -> str:
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(public).decode()


def rotation_due(created_ns: int, rotate_interval: float | None, now_ns: int) -> bool:
    return rotate_interval is not None and now_ns - created_ns >= rotate_interval * 1e9


class KeyStore:
    """The private key file (0600, never sent anywhere) and when it was made."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key_path = directory / "private.key"
        self.created_path = directory / "key_created_ns"

    def load(self) -> KeyPair | None:
        try:
            private_b64 = self.key_path.read_text().strip()
            created = int(self.created_path.read_text().strip())
            public = public_key_of(base64.b64decode(private_b64, validate=True))
        except (FileNotFoundError, ValueError):
            return None  # none yet, or unreadable: a new pair (peers learn it as usual)
        return KeyPair(private_b64, public, created)

    def save(self, pair: KeyPair) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.key_path, pair.private_key + "\n")
        _write_private(self.created_path, f"{pair.created_ns}\n")


def _write_private(path: Path, text: str) -> None:
    # Made 0600 from the start (never world-readable for an instant), then renamed in place.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
