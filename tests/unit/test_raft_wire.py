"""pysyncobj's messages between managers are stored zlib streams (manager/raft/wire.py): sent
through pysyncobj's own connection over a real socket pair, read back as its peer would."""

from __future__ import annotations

import os
import socket
import struct
import zlib

from pysyncobj import tcp_connection
from pysyncobj.pickle import dumps, loads
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import TcpConnection

import manager.raft  # noqa: F401  (installs the stored wire format)

SEALED = os.urandom(60_000)  # as a sealed entry is: nothing to compress
PLAIN = b"a" * 60_000  # compressible: shows the bytes were stored, not compressed


def _sent(message: object) -> bytes:
    """The frame pysyncobj's connection writes for `message` (its 4-byte length, then data)."""
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        conn = TcpConnection(createPoller("auto"), socket=ours, timeout=5.0)
        conn.send(message)
        theirs.settimeout(5)
        head = theirs.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack("i", head)
        return theirs.recv(length, socket.MSG_WAITALL)
    finally:
        ours.close()
        theirs.close()


def test_a_message_is_sent_stored_and_read_back_as_zlib() -> None:
    message = ("append_entries", [(SEALED, 7, 2)], PLAIN)
    data = _sent(message)
    assert len(data) >= len(dumps(message))  # stored: PLAIN would shrink at any level
    assert loads(zlib.decompress(data)) == message  # what a pysyncobj peer reads


def test_a_compressed_message_from_a_peer_still_reads() -> None:
    message = {"type": "append_entries_response", "success": True}
    assert loads(tcp_connection.zlib.decompress(zlib.compress(dumps(message), 3))) == message
