"""Raft (pysyncobj) for the managers.

Importing pysyncobj replaces `socket.inet_ntop` and `inet_pton` process-wide with its
Windows fallbacks, which fail everywhere else (pyroute2 and the resolver use them in the
same process): keep the real ones. Its messages are stored, not compressed (wire.py).
"""

import socket

_real = (socket.inet_ntop, socket.inet_pton)
import pysyncobj  # noqa: E402, F401  (imported here, once, to undo its side effect)

socket.inet_ntop, socket.inet_pton = _real

from manager.raft import wire  # noqa: E402

wire.install()
