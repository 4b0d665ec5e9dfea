"""What one Raft entry of task changes costs each manager (issue 11, goal 3).

Every manager applies every entry, and the leader sends each to every follower. Two costs
per task, each timed in this process, alternating, --repeat times, medians:

  apply   MemoryStore.apply of batches of 200 task creates, then of 200 status updates
          (a store of --tasks tasks), with Python's collector as CPython sets it (young
          generation every 700 allocations), as shoald sets it (shoal/gcwatch.py THRESHOLDS),
          and off (the floor)
  growth  a heap growing by --growth million tracked objects (a leader's burst) with
          shoal/gcwatch.py's GcWatch installed at each setting: how many full collections
          and the longest (with (50,000, 10, 10) there was none until one of 2.66 s)
  send    what pysyncobj's connection does to an entry's bytes before the socket: zlib at
          its level 3, and stored (level 0, manager/raft/wire.py); entries are sealed with
          the Raft data key, so there is nothing to compress

    .venv/bin/python bench/entry_cost.py [--tasks 20000] [--repeat 5] [--json PATH]

Results: a table on stdout and bench/results/entry_cost.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from manager.raft import wire  # noqa: E402
from manager.store.memory import MemoryStore, wrap  # noqa: E402
from pki import sealing  # noqa: E402
from proto import objects_pb2 as pb  # noqa: E402
from proto import store_pb2  # noqa: E402
from shoal.gcwatch import THRESHOLDS, GcWatch  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "entry_cost.json"
BATCH = 200
COLLECTORS = {"cpython": (700, 10, 10), "shoald": THRESHOLDS, "off": None}


def task(i: int) -> pb.Task:
    t = pb.Task(id=f"task{i:021d}", service_id=f"svc{i % 20:022d}", slot=i // 20 + 1,
                node_id=f"node{i % 500:021d}", desired_state=pb.RUNNING)
    t.spec.container.image = "busybox:latest"
    t.spec.container.command.extend(["sleep", "3600"])
    t.status.state = pb.ASSIGNED
    t.status.message = "scheduler assigned task to node"
    return t


def batches(tasks: list[pb.Task], kind: int) -> list[store_pb2.StoreBatch]:
    """Batches of BATCH creates, or of BATCH updates to RUNNING, each for the version its
    create made."""
    out = []
    for n, start in enumerate(range(0, len(tasks), BATCH)):
        batch = store_pb2.StoreBatch(timestamp_ns=time.time_ns(), request_id=f"{kind}-{n}")
        for t in tasks[start:start + BATCH]:
            obj = pb.Task()
            obj.CopyFrom(t)
            if kind == store_pb2.UPDATE:
                obj.meta.version.index = n + 1
                obj.status.state = pb.RUNNING
            batch.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))
        out.append(batch)
    return out


def time_apply(creates: list[store_pb2.StoreBatch], updates: list[store_pb2.StoreBatch],
               collector: tuple[int, int, int] | None) -> tuple[float, float]:
    """Seconds to apply the creates, then the updates, on a fresh store."""
    saved = gc.get_threshold()
    gc.collect()
    if collector is None:
        gc.disable()
    else:
        gc.set_threshold(*collector)
    try:
        store = MemoryStore()
        start = time.perf_counter()
        for b in creates:
            assert store.apply(b).error is None
        middle = time.perf_counter()
        for b in updates:
            result = store.apply(b)
            assert result.error is None, result.error
        return middle - start, time.perf_counter() - middle
    finally:
        gc.enable()
        gc.set_threshold(*saved)


def time_growth(collector: tuple[int, int, int], objects: int) -> dict[str, float]:
    """Full collections while a heap grows by `objects` tracked objects, and the longest."""
    pauses: list[float] = []
    started = [0.0]

    def clock(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.append(time.perf_counter() - started[0])

    watch = GcWatch(thresholds=collector)
    watch.install()
    gc.callbacks.append(clock)
    try:
        start = time.perf_counter()
        heap = [[i, {"i": i}] for i in range(objects // 2)]
        took = time.perf_counter() - start
        del heap
    finally:
        gc.callbacks.remove(clock)
        watch.remove()
    return {"full_collections": len(pauses), "longest_s": round(max(pauses, default=0.0), 3),
            "all_s": round(sum(pauses), 3), "grow_s": round(took, 2)}


def time_send(entries: list[bytes], level: int) -> float:
    start = time.perf_counter()
    for data in entries:
        zlib.compress(data, level)
    return time.perf_counter() - start


def run(tasks_n: int, repeat: int, growth: int) -> dict[str, Any]:
    tasks = [task(i) for i in range(tasks_n)]
    creates = batches(tasks, store_pb2.CREATE)
    updates = batches(tasks, store_pb2.UPDATE)
    key = os.urandom(32)
    entries = [sealing.seal(key, b.SerializeToString()) for b in creates]
    entry_bytes = sum(len(e) for e in entries)
    apply: dict[str, dict[str, list[float]]] = {c: {"create": [], "update": []}
                                                for c in COLLECTORS}
    send: dict[str, list[float]] = {"level3": [], "stored": []}
    for _ in range(repeat):
        for name, collector in COLLECTORS.items():
            created, updated = time_apply(creates, updates, collector)
            apply[name]["create"].append(created)
            apply[name]["update"].append(updated)
        send["level3"].append(time_send(entries, 3))
        send["stored"].append(time_send(entries, wire.STORED))
    grown = {name: time_growth(c, growth) for name, c in COLLECTORS.items() if c is not None}
    us = 1e6 / tasks_n
    rows = {name: {kind: round(statistics.median(v) * us, 1) for kind, v in runs.items()}
            for name, runs in apply.items()}
    send_us = {k: round(statistics.median(v) * us, 2) for k, v in send.items()}
    return {
        "config": {"tasks": tasks_n, "batch": BATCH, "repeat": repeat,
                   "thresholds": list(THRESHOLDS),
                   "python": platform.python_version(), "cpus": os.cpu_count()},
        "apply_us_per_task": rows,
        "apply_ratio_shoald_vs_cpython": {
            k: round(rows["shoald"][k] / rows["cpython"][k], 2) for k in ("create", "update")},
        "heap_growth": {"objects": growth, **grown},
        "entry_bytes_per_task": round(entry_bytes / tasks_n, 1),
        "send_us_per_task_per_follower": send_us,
        "send_ratio_stored_vs_level3": round(send_us["stored"] / send_us["level3"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--growth", type=float, default=3.0, help="millions of objects")
    ap.add_argument("--quick", action="store_true", help="2,000 tasks, 2 repeats, growth 0.6")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    logging.getLogger("shoal.gcwatch").setLevel(logging.ERROR)  # its slow-collection notes
    tasks_n, repeat, growth = (2_000, 2, 0.6) if args.quick else \
        (args.tasks, args.repeat, args.growth)
    result = run(tasks_n, repeat, int(growth * 1e6))
    print(f"{tasks_n} tasks, batches of {BATCH}, medians of {repeat} (µs per task)")
    print(f"{'collector':<10} {'create':>8} {'update':>8}")
    for name, row in result["apply_us_per_task"].items():
        print(f"{name:<10} {row['create']:>8} {row['update']:>8}")
    ratio = result["apply_ratio_shoald_vs_cpython"]
    print(f"shoald / cpython: create x{ratio['create']}, update x{ratio['update']}")
    grown = result["heap_growth"]
    for name in ("cpython", "shoald"):
        g = grown[name]
        print(f"heap +{grown['objects']:,} objects, {name}: {g['full_collections']} full "
              f"collections, longest {g['longest_s']} s, all {g['all_s']} s")
    send = result["send_us_per_task_per_follower"]
    print(f"send, per task and follower ({result['entry_bytes_per_task']} B sealed): zlib "
          f"level 3 {send['level3']} µs, stored {send['stored']} µs "
          f"(x{result['send_ratio_stored_vs_level3']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
