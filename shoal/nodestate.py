"""What a node keeps on disk in its data root: its swarm membership and its certificates.

Layout: state.json, certificates/{node.key,node.crt,ca.crt}, raft/ (journal, dump, keys).

With autolock on (managers only), node.key is an encrypted PEM and raft/keys (the Raft
transport secret and data key) is sealed, both with the key-encryption key derived from the
unlock key; `kek` is that key while the node holds it (never written anywhere).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import asdict, dataclass, field

from pki import sealing


@dataclass
class SwarmState:
    node_id: str
    cluster_id: str
    advertise_ip: str
    listen_ip: str
    port: int  # cluster port; the join bootstrap listens on port+1, Raft on port+2
    managers: list[str] = field(default_factory=list)  # cluster addresses, IP:PORT
    raft_peers: list[str] = field(default_factory=list)  # Raft members when last seen

    @property
    def addr(self) -> str:
        return f"{self.advertise_ip}:{self.port}"

    @property
    def bootstrap_addr(self) -> str:
        return f"{self.advertise_ip}:{self.port + 1}"

    @property
    def raft_addr(self) -> str:
        return f"{self.advertise_ip}:{self.port + 2}"


@dataclass
class Certificates:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


class DataRoot:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        self.kek: bytes | None = None

    @property
    def raft_dir(self) -> str:
        return os.path.join(self.path, "raft")

    def _file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def load_state(self) -> SwarmState | None:
        try:
            with open(self._file("state.json")) as f:
                return SwarmState(**json.load(f))
        except FileNotFoundError:
            return None

    def save_state(self, state: SwarmState) -> None:
        _atomic_write(self._file("state.json"), json.dumps(asdict(state), indent=1).encode())

    def load_certs(self) -> Certificates:
        """Raises sealing.WrongKey when the key is sealed and `kek` is not its key."""
        names = ("node.key", "node.crt", "ca.crt")
        key, cert, ca = (open(self._file("certificates", n), "rb").read() for n in names)
        if sealing.is_sealed_pem(key):
            key = sealing.unseal_key_pem(key, self.kek or b"\0")
        return Certificates(key, cert, ca)

    def save_certs(self, certs: Certificates) -> None:
        os.makedirs(self._file("certificates"), mode=0o700, exist_ok=True)
        key = sealing.seal_key_pem(certs.key_pem, self.kek) if self.kek else certs.key_pem
        _atomic_write(self._file("certificates", "node.key"), key)
        _atomic_write(self._file("certificates", "node.crt"), certs.cert_pem)
        _atomic_write(self._file("certificates", "ca.crt"), certs.ca_pem)

    def is_sealed(self) -> bool:
        """Whether the node's keys on disk are sealed (it starts locked)."""
        try:
            with open(self._file("certificates", "node.key"), "rb") as f:
                return sealing.is_sealed_pem(f.read())
        except FileNotFoundError:
            return False

    def save_raft_keys(self, secret: str, dek: bytes) -> None:
        os.makedirs(self.raft_dir, mode=0o700, exist_ok=True)
        data = json.dumps({"secret": secret, "dek": base64.b64encode(dek).decode()}).encode()
        _atomic_write(self._file("raft", "keys"),
                      sealing.seal(self.kek, data) if self.kek else data)
        old = self._file("raft", "secret")  # an older data root's clear secret: gone now
        if os.path.exists(old):
            os.remove(old)

    def load_raft_keys(self) -> tuple[str, bytes | None]:
        """The Raft transport secret and data key (an older data root: no data key)."""
        try:
            with open(self._file("raft", "keys"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            with open(self._file("raft", "secret")) as f:
                return f.read().strip(), None
        if sealing.is_sealed(data):
            data = sealing.unseal(self.kek or b"\0" * 32, data)
        keys = json.loads(data)
        return keys["secret"], base64.b64decode(keys["dek"])

    def remove_raft(self) -> None:
        shutil.rmtree(self.raft_dir, ignore_errors=True)

    def wipe(self) -> None:
        """Forget the swarm: what `swarm leave` leaves behind is an empty data root."""
        for name in ("state.json", "certificates", "raft"):
            target = self._file(name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            elif os.path.exists(target):
                os.remove(target)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
