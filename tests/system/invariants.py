"""What must hold on a lab after a fault, checked against a recorded History.

`check_after_fault` polls every manager (and the engine) until all the rules hold at once,
or the deadline passes (60 s: the issue gives a slot with two live tasks 60 s after the fault
to be repaired); then it fails with every violation of the last round, by rule:
- lost: an acknowledged create missing, or a counter label below its highest acked value;
- phantom: a failed write (clear error) present, or seen by a read;
- names: a service name twice;
- slots: a slot (or a global service's node) with two live tasks (desired running, state
  at most running), or two running containers in the engine for one slot;
- down: a node whose shoald is alive not Ready;
- agree: managers differ on services (ID, name, version), nodes (state, role,
  availability) or tasks (slot, node, desired state, state).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import docker

from proto import objects_pb2 as pb
from shoal import lab as labmod
from shoal.client import APIError
from shoal.lab import LabState
from tests.system.history import COUNTER_PREFIX, CREATE, FAIL, LABEL, OK, History, Op

LABEL_TASK_ID = "com.docker.swarm.task.id"
FAULT_DEADLINE = 60.0
DETECT = 5.0  # a cut-off manager knows it has no majority within this (a few election timeouts)
ANSWER = 1.0  # ... and from then on answers a write with 503 within this
QUIET = 5.0  # seconds the rules must keep holding


@dataclass(frozen=True)
class View:
    """One manager's answer to the three listings (read one after another)."""

    host: str
    services: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


def take_view(host: labmod.HostState) -> View | str:
    client = host.client(timeout=5.0)
    try:
        return View(host.name, client.get("/services"), client.get("/nodes"),
                    client.get("/tasks"))
    except APIError as exc:
        return f"{host.name}: no answer ({exc.status} {exc.message[:100]})"


def live(task: dict[str, Any]) -> bool:
    state = pb.TaskState.Value(task["Status"]["State"].upper())
    return bool(task["DesiredState"] == "running" and state <= pb.RUNNING)


def slot_key(task: dict[str, Any]) -> tuple[str, str]:
    """A replicated task's slot, or a global task's node."""
    slot = task.get("Slot")
    return task["ServiceID"], f"slot {slot}" if slot else f"node {task.get('NodeID')}"


# ---- rules over one view (pure) ----------------------------------------------------------

def lost_writes(view: View, history: History, counter_id: str) -> list[str]:
    names = {s["Spec"]["Name"] for s in view.services}
    out = [f"{view.host}: acked {op.describe()} missing"
           for op in history.select(CREATE, OK) if op.target not in names]
    counter = next((s for s in view.services if s["ID"] == counter_id), None)
    labels = (counter or {}).get("Spec", {}).get("Labels") or {}
    best: dict[str, int] = {}
    for op in history.select(LABEL, OK):
        best[op.target] = max(best.get(op.target, 0), op.value)
    for key, value in sorted(best.items()):
        have = int(labels.get(key, "0"))
        if have < value:
            out.append(f"{view.host}: {key}={have}, below the acked value {value}")
    return out


def phantom_writes(view: View, history: History, counter_id: str) -> list[str]:
    """A name may be created by several clients (one must win): more services of a name
    than creates of it acked or of unknown outcome means a failed one took effect."""
    names = Counter(s["Spec"]["Name"] for s in view.services)
    allowed = Counter(op.target for op in history.select(CREATE) if op.outcome != FAIL)
    out = [f"{view.host}: failed {op.describe()} is present ({names[op.target]} services)"
           for op in history.select(CREATE, FAIL) if names[op.target] > allowed[op.target]]
    counter = next((s for s in view.services if s["ID"] == counter_id), None)
    labels = (counter or {}).get("Spec", {}).get("Labels") or {}
    failed = {(op.target, str(op.value)): op for op in history.select(LABEL, FAIL)}
    out += [f"{view.host}: failed {op.describe()} is the current value"
            for key, value in labels.items() if (op := failed.get((key, value)))]
    return out


def phantom_reads(history: History) -> list[str]:
    failed = {(op.target, str(op.value)): op for op in history.select(LABEL, FAIL)}
    return [f"read on {r.manager} at {r.at:.2f} saw failed {op.describe()}"
            for r in history.reads for key, value in r.labels.items()
            if key.startswith(COUNTER_PREFIX) and (op := failed.get((key, value)))]


def duplicate_names(view: View) -> list[str]:
    counts = Counter(s["Spec"]["Name"] for s in view.services)
    return [f"{view.host}: service name {name!r} {n} times"
            for name, n in sorted(counts.items()) if n > 1]


def duplicate_slots(view: View) -> list[str]:
    by_slot: dict[tuple[str, str], list[str]] = defaultdict(list)
    for task in view.tasks:
        if live(task):
            by_slot[slot_key(task)].append(
                f"{task['ID'][:10]}@{task.get('NodeID', '')[:10]}:{task['Status']['State']}")
    return [f"{view.host}: service {svc[:10]} {slot} has live tasks {tasks}"
            for (svc, slot), tasks in sorted(by_slot.items()) if len(tasks) > 1]


def nodes_not_ready(view: View, alive: Iterable[str]) -> list[str]:
    states = {n["Description"]["Hostname"]: n["Status"]["State"] for n in view.nodes}
    return [f"{view.host}: node {name} is {states.get(name, 'missing')} while its shoald runs"
            for name in sorted(alive) if states.get(name) != "ready"]


def digest(view: View) -> dict[str, Any]:
    return {
        "services": {s["ID"]: (s["Spec"]["Name"], s["Version"]["Index"])
                     for s in view.services},
        "nodes": {n["ID"]: (n["Status"]["State"], n["Spec"]["Role"],
                            n["Spec"]["Availability"]) for n in view.nodes},
        "tasks": {t["ID"]: (t.get("Slot"), t.get("NodeID"), t["DesiredState"],
                            t["Status"]["State"]) for t in view.tasks},
    }


def disagreement(views: list[View]) -> list[str]:
    if len(views) < 2:
        return []
    first, out = digest(views[0]), []
    for view in views[1:]:
        other = digest(view)
        for part in ("services", "nodes", "tasks"):
            a, b = first[part], other[part]
            diff = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            if diff:
                sample = dict(sorted(diff.items())[:3])
                out.append(f"{views[0].host} vs {view.host}: {len(diff)} {part} differ, "
                           f"e.g. {sample}")
    return out


def engine_duplicates(containers: list[dict[str, Any]], view: View) -> list[str]:
    """Running containers, by the slot of their task in `view`: at most one task per slot."""
    tasks = {t["ID"]: t for t in view.tasks}
    by_slot: dict[tuple[str, str], set[str]] = defaultdict(set)
    per_task: Counter[str] = Counter()
    out = []
    for c in containers:
        task_id = (c.get("Labels") or {}).get(LABEL_TASK_ID, "")
        per_task[task_id] += 1
        if task_id not in tasks:
            out.append(f"engine: running container {c['Id'][:12]} of task {task_id[:10]} "
                       f"unknown to {view.host}")
            continue
        by_slot[slot_key(tasks[task_id])].add(task_id[:10])
    out += [f"engine: task {t[:10]} has {n} running containers"
            for t, n in per_task.items() if n > 1]
    out += [f"engine: service {svc[:10]} {slot} runs containers of tasks {sorted(ids)}"
            for (svc, slot), ids in sorted(by_slot.items()) if len(ids) > 1]
    return out


def cut_side_problems(ops: list[Op], cut_at: float, healed_at: float) -> list[str]:
    """Writes sent to the cut-off leader while it was cut off: none acknowledged, and once it
    had time to notice (DETECT), each refused with 503 within ANSWER."""
    out = []
    for op in ops:
        if op.end <= cut_at or op.start >= healed_at:
            continue
        if op.outcome == OK and op.start >= cut_at and op.end < healed_at:
            out.append(f"acknowledged while cut off: {op.describe()}")
        answer_by = max(op.start, cut_at + DETECT) + ANSWER
        if answer_by < healed_at and op.end > answer_by:
            out.append(f"no answer {ANSWER} s after detection (took {op.duration:.2f} s): "
                       f"{op.describe()}")
        elif op.start >= cut_at + DETECT and op.status != 503:
            out.append(f"answered {op.status}, not 503: {op.describe()}")
    return out


# ---- one round, and the wait ---------------------------------------------------------------

def running_containers(lab: LabState) -> list[dict[str, Any]]:
    assert lab.engine, "the lab has no engine"
    client = docker.DockerClient(base_url=lab.engine, version="1.41")
    try:
        return list(client.api.containers(filters={"label": LABEL_TASK_ID}))
    finally:
        client.close()


Extra = dict[str, Callable[[], list[str]]]


def violations(lab_name: str, history: History, counter_id: str,
               extra: Extra | None = None) -> dict[str, list[str]]:
    """Every rule broken now, by rule name (empty when all hold); `extra` adds a test's own
    rules (name -> what breaks it now)."""
    lab = labmod.status(lab_name)
    alive = {h.name for h in lab.hosts if h.alive}
    answers = [take_view(h) for h in lab.hosts if h.role == "manager" and h.alive]
    views = [a for a in answers if isinstance(a, View)]
    found: dict[str, list[str]] = defaultdict(list)
    found["unreachable"] = [a for a in answers if isinstance(a, str)]
    found["phantom"] += phantom_reads(history)
    for view in views:
        found["lost"] += lost_writes(view, history, counter_id)
        found["phantom"] += phantom_writes(view, history, counter_id)
        found["names"] += duplicate_names(view)
        found["slots"] += duplicate_slots(view)
        found["down"] += nodes_not_ready(view, alive)
    found["agree"] = disagreement(views)
    if views:
        found["slots"] += engine_duplicates(running_containers(lab), views[0])
    for rule, check in (extra or {}).items():
        found[rule] += check()
    return {rule: items for rule, items in found.items() if items}


def check_after_fault(lab_name: str, history: History, counter_id: str,
                      extra: Extra | None = None, known: dict[str, list[str]] | None = None,
                      timeout: float = FAULT_DEADLINE, quiet: float = QUIET) -> float:
    """Wait (up to `timeout`) until every rule holds, and keeps holding for `quiet` seconds
    (a rule checked at once could pass before the cluster reacted to the fault); fail with
    the last violations, and with `known` ones (a test's findings about the past, which no
    wait can change). Returns the seconds until the rules first held for good."""
    start = time.monotonic()
    held_since: float | None = None
    shown: dict[str, int] = {}
    while True:
        found = violations(lab_name, history, counter_id, extra)
        now = time.monotonic()
        if (counts := {rule: len(items) for rule, items in found.items()}) != shown:
            shown = counts  # a timeline of what is broken, for the test's output
            print(f"+{now - start:.1f} s: " + ("; ".join(
                f"{rule} x{len(items)}: {items[0]}" for rule, items in found.items())
                or "all rules hold"))
        if found:
            held_since = None
        elif held_since is None:
            held_since = now
        elif now - held_since >= quiet:
            break
        if found and now - start >= timeout:
            break
        time.sleep(0.5)
    found |= {rule: items for rule, items in (known or {}).items() if items}
    if not found and held_since is not None:
        print(f"history checked: all rules hold from {held_since - start:.1f} s on, "
              f"for {quiet:.0f} s\n{history.summary()}")
        return held_since - start
    report = "\n".join(f"[{rule}] {len(items)}: " + "\n    ".join(items[:8])
                       for rule, items in found.items())
    held = "" if held_since is None else f" (the others held from {held_since - start:.1f} s)"
    raise AssertionError(f"after {now - start:.0f} s, rules broken{held}:\n{report}\n"
                         f"{history.summary()}")
