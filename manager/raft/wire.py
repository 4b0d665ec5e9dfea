"""What pysyncobj puts on the wire between managers: its messages, stored, not compressed.

pysyncobj compresses every message it sends with zlib at level 3. Our log entries are sealed
with the Raft data key (AES-GCM output): there is nothing to compress, and zlib at level 3
takes 29 ms per MB of such bytes, at level 0 0.5 ms. On a leader at 500 nodes and 50,000
tasks it was 15 % of the samples (`TcpConnection.send`, bench/README.md, eighth pass), once
per follower for every entry. Level 0 keeps the format (a zlib stream of stored blocks),
so any pysyncobj peer reads it as before.
"""

from __future__ import annotations

import zlib
from typing import Any

import pysyncobj.tcp_connection as tcp_connection

STORED = 0


class _StoredZlib:
    """The part of `zlib` that pysyncobj's connections call: compress() stores."""

    error = zlib.error

    @staticmethod
    def compress(data: Any, level: int = -1) -> bytes:
        return zlib.compress(data, STORED)

    @staticmethod
    def decompress(data: Any) -> bytes:
        return zlib.decompress(data)


def install() -> None:
    """pysyncobj's connections send stored zlib streams from now on (process-wide: every
    pysyncobj connection in a manager is ours)."""
    tcp_connection.zlib = _StoredZlib  # type: ignore[assignment]
