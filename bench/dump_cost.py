"""What one full Raft dump costs the thread that sends heartbeats (issue 11, goal 3).

pysyncobj compacts its log every DEFAULT_SNAPSHOT_INTERVAL (10,000) entries by writing a
full dump: our consumer's state (the store's snapshot, sealed with the Raft data key),
pickled into gzip. It wrote it on its tick thread, which then sent no append-entries, and
followers stand for election after 0.5-1.0 s without one. For stores of each size this
times, alternating, --repeat times each:

  tick     what the tick thread does now: the consumer's `take` (the store's view captured)
           and starting the writer (manager/raft/dumps.py DumpWriter.write)
  writer   the writer's thread, from that start until the dump is in place (objects framed
           one by one, sealed, gzip level 0, synced)
  before   the dump as it was written, all on the tick thread: every object copied into one
           StoreSnapshot message, sealed, gzip level 9 (rebuilt here from the code it
           replaced)

Medians, and tick / before and writer / before.

    .venv/bin/python bench/dump_cost.py [--tasks 20000,100000] [--repeat 3] [--json PATH]

The store is api_load_server.py's: tasks/20 nodes, 100 services, every task running.
Results: a table on stdout and bench/results/dump_cost.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from api_load_server import StoreManager, fill  # noqa: E402
from pysyncobj.config import SERIALIZER_STATE  # noqa: E402
from pysyncobj.pickle import dumps as pickle_dumps  # noqa: E402

from manager.raft.dumps import DumpWriter, Encode  # noqa: E402
from manager.store.memory import MemoryStore, wrap  # noqa: E402
from manager.store.view import TABLES  # noqa: E402
from pki import sealing  # noqa: E402
from proto import store_pb2  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "dump_cost.json"
ENTRY = (b"", 1, 1)  # pysyncobj's (command, index, term) of the last applied entries


class Sync:
    """The SyncObj's part of a dump: its own fields outside __properies (one, in pysyncobj)."""

    def __init__(self) -> None:
        self._SyncObj__properies = {"_SyncObj__properies"}
        self._SyncObj__enabledCodeVersion = 0


def dump_now(store: MemoryStore, dek: bytes, path: Path) -> tuple[float, float]:
    """(seconds on the tick thread, seconds until the dump is in place)."""
    def take() -> Encode:  # _StoreConsumer.take in manager/raft/replica.py
        view, applied = store.capture()
        return lambda: sealing.seal(dek, MemoryStore.encode(view, applied))

    writer = DumpWriter(str(path), take, lambda _data: None)
    writer.sync = Sync()
    began = time.perf_counter()
    writer.write(str(path) + ".tmp", (ENTRY, ENTRY, set()))
    tick = time.perf_counter() - began
    writer.wait(600)
    done = time.perf_counter() - began
    if writer.check() != SERIALIZER_STATE.SUCCESS:
        raise RuntimeError(f"the dump to {path} failed")
    return tick, done


def dump_before(store: MemoryStore, dek: bytes, path: Path) -> None:
    """The same as it was: every object copied into one message, gzip at level 9."""
    view = store.view()
    snap = store_pb2.StoreSnapshot(version=view.version, epoch=view.epoch)
    for table in TABLES:
        snap.objects.extend(wrap(o) for o in view.tables[table].values())
    state = [{}, sealing.seal(dek, snap.SerializeToString())]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9) as g:
        g.write(pickle_dumps((state, ENTRY, ENTRY, set())))
    os.replace(tmp, path)


def measure(tasks: int, repeat: int, tmp: Path) -> dict[str, Any]:
    mgr = StoreManager()
    fill(mgr, max(1, tasks // 20), 100, tasks)
    dek = os.urandom(32)
    runs: dict[str, list[float]] = {"tick": [], "writer": [], "before": []}
    for _ in range(repeat):
        tick, done = dump_now(mgr.store, dek, tmp / "now.bin")
        runs["tick"].append(tick)
        runs["writer"].append(done)
        began = time.perf_counter()
        dump_before(mgr.store, dek, tmp / "before.bin")
        runs["before"].append(time.perf_counter() - began)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"tasks": tasks, "objects": sum(len(mgr.store.view().tables[t]) for t in TABLES),
            "dump_mb": round((tmp / "now.bin").stat().st_size / 1e6, 1),
            **{f"{k}_ms": round(v * 1000, 2) for k, v in med.items()},
            "tick_ratio": round(med["tick"] / med["before"], 5),
            "writer_ratio": round(med["writer"] / med["before"], 3),
            "runs_ms": {k: [round(x * 1000, 2) for x in v] for k, v in runs.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="20000,100000", help="store sizes, comma-separated")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shoal-dump-cost-") as tmp:
        for tasks in (int(t) for t in args.tasks.split(",")):
            rows.append(measure(tasks, args.repeat, Path(tmp)))
            r = rows[-1]
            print(f"{r['tasks']:>7} tasks ({r['dump_mb']} MB): tick thread {r['tick_ms']:.2f} ms,"
                  f" writer thread {r['writer_ms']:.0f} ms, before (all on the tick thread) "
                  f"{r['before_ms']:.0f} ms", flush=True)
    result = {"benchmark": "dump_cost", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "args": vars(args) | {"json": str(args.json)}, "rows": rows,
              "note": "ms per full dump; followers stand for election after 0.5-1.0 s "
                      "without append-entries from the tick thread"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
