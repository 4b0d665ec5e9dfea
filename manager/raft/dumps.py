"""pysyncobj's full dumps, written without compression.

pysyncobj writes each full dump (log compaction, every DEFAULT_SNAPSHOT_INTERVAL entries)
on its tick thread, the thread that also sends heartbeats and entries, as a pickle in gzip
at level 9. Ours hold the store sealed with the Raft data key (AES-GCM output: nothing to
compress), so gzip only cost time: 0.56 s for the 27 MB of a 100,000-task store, all of it
with no append-entries sent while the followers' election timers (0.5-1.0 s) ran. Level 0
writes the same format, which pysyncobj and every earlier dump read as before: 46 ms.
"""

from __future__ import annotations

import functools
import gzip
import types

from pysyncobj import serializer

GZIP_LEVEL = 0


def write_dumps_uncompressed() -> None:
    """pysyncobj's serializer module looks `gzip.GzipFile` up at each dump and load."""
    serializer.gzip = types.SimpleNamespace(  # type: ignore[attr-defined]
        GzipFile=functools.partial(gzip.GzipFile, compresslevel=GZIP_LEVEL))
