"""What one full Raft dump costs the thread that sends heartbeats (issue 11, goal 3).

pysyncobj compacts its log every DEFAULT_SNAPSHOT_INTERVAL (10,000) entries by writing a
full dump on its tick thread: our consumer's state (the store's snapshot, sealed with the
Raft data key), pickled into gzip. While it writes, that thread sends no append-entries,
and followers stand for election after 0.5-1.0 s without one. For stores of each size this
times, on one thread, the dump as the code writes it now (objects framed one by one, gzip
level 0: manager/store/memory.py, manager/raft/dumps.py) against the dump as it was written
before (every object copied into one StoreSnapshot message, gzip level 9), both to a file in
a temporary directory, alternating, --repeat times each; medians and their ratio.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from api_load_server import StoreManager, fill  # noqa: E402
from pysyncobj.pickle import dumps as pickle_dumps  # noqa: E402
from pysyncobj.serializer import Serializer  # noqa: E402

import manager.raft.replica  # noqa: E402,F401 (installs the uncompressed dumps)
from manager.store.memory import MemoryStore, wrap  # noqa: E402
from manager.store.view import TABLES  # noqa: E402
from pki import sealing  # noqa: E402
from proto import store_pb2  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "dump_cost.json"
ENTRY = (b"", 1, 1)  # pysyncobj's (command, index, term) of the last applied entries


def dump_now(store: MemoryStore, dek: bytes, path: Path) -> None:
    """What the tick thread does now: _StoreConsumer._serialize, then pysyncobj's dump."""
    state = [{}, sealing.seal(dek, store.snapshot())]
    Serializer(str(path), 2 ** 16, False, None, None, None).serialize(
        (state, ENTRY, ENTRY, set()), 1)


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


def timed(run: Callable[[], None]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def measure(tasks: int, repeat: int, tmp: Path) -> dict[str, Any]:
    mgr = StoreManager()
    fill(mgr, max(1, tasks // 20), 100, tasks)
    dek = os.urandom(32)
    runs: dict[str, list[float]] = {"now": [], "before": []}
    for _ in range(repeat):
        runs["now"].append(timed(lambda: dump_now(mgr.store, dek, tmp / "now.bin")))
        runs["before"].append(timed(lambda: dump_before(mgr.store, dek, tmp / "before.bin")))
    now, before = (statistics.median(runs[k]) for k in ("now", "before"))
    return {"tasks": tasks, "objects": sum(len(mgr.store.view().tables[t]) for t in TABLES),
            "dump_mb": round((tmp / "now.bin").stat().st_size / 1e6, 1),
            "now_ms": round(now * 1000, 1), "before_ms": round(before * 1000, 1),
            "ratio": round(now / before, 3),
            "runs_ms": {k: [round(x * 1000, 1) for x in v] for k, v in runs.items()}}


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
            print(f"{r['tasks']:>7} tasks ({r['dump_mb']} MB): now {r['now_ms']:.0f} ms, "
                  f"before {r['before_ms']:.0f} ms, ratio {r['ratio']:.2f}", flush=True)
    result = {"benchmark": "dump_cost", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "args": vars(args) | {"json": str(args.json)}, "rows": rows,
              "note": "ms on the tick thread per full dump; followers' election timeout "
                      "is 0.5-1.0 s"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
