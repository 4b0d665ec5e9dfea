"""What a node keeps on disk in its data root: its swarm membership and its certificates.

Layout: state.json, certificates/{node.key,node.crt,ca.crt}, raft/ (journal, dump, peers).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field


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
        names = ("node.key", "node.crt", "ca.crt")
        key, cert, ca = (open(self._file("certificates", n), "rb").read() for n in names)
        return Certificates(key, cert, ca)

    def save_certs(self, certs: Certificates) -> None:
        os.makedirs(self._file("certificates"), mode=0o700, exist_ok=True)
        _atomic_write(self._file("certificates", "node.key"), certs.key_pem)
        _atomic_write(self._file("certificates", "node.crt"), certs.cert_pem)
        _atomic_write(self._file("certificates", "ca.crt"), certs.ca_pem)

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
