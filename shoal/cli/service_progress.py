"""Waiting for a service to converge after create / update / scale / rollback, as the docker
CLI does without --detach: every 200 ms GET the service, its up-to-date tasks and the nodes;
show one progress line per slot (per node for global services); once every task runs, keep
watching for the update monitor period (default 5 s) and report "verify: Service ID
converged". A paused or rolled-back update ends the wait with the UpdateStatus message."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click

from shoal.cli.output import CommandFailed, truncate_id
from shoal.client import Client

POLL_SECONDS = 0.2
DEFAULT_MONITOR_NS = 5_000_000_000
# The states a task goes through until it runs; the bar fills along them.
STEPS = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready",
         "starting", "running")
_DESIRED_RANK = {"running": 0, "ready": 0, "complete": 1, "shutdown": 2, "remove": 3}
BAR = 30


def bar(state: str) -> str:
    if state not in STEPS:
        return ""
    filled = BAR * (STEPS.index(state) + 1) // len(STEPS)
    body = "=" * filled + (">" if filled < BAR else "")
    return f"[{body.ljust(BAR)}]"


def choose(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The task that represents a slot: lowest desired state, then lowest observed one."""
    def rank(t: dict[str, Any]) -> tuple[int, int]:
        state = (t.get("Status") or {}).get("State", "")
        return (_DESIRED_RANK.get(t.get("DesiredState", ""), 9),
                STEPS.index(state) if state in STEPS else len(STEPS))
    return min(tasks, key=rank)


def task_state(t: dict[str, Any]) -> str:
    return str((t.get("Status") or {}).get("State", ""))


@dataclass
class Snapshot:
    """One poll, reduced to the progress lines and whether the service has converged."""

    lines: list[tuple[str, str]] = field(default_factory=list)  # (label, state)
    done: int = 0
    total: int = 0
    converged: bool = False
    job: bool = False


def counts(task: dict[str, Any], job: bool) -> bool:
    """Whether a task shows in the progress: desired and observed state on the way to
    running (as the docker CLI's), or a job's completed task."""
    state, desired = task_state(task), task.get("DesiredState", "")
    if job and state == "complete":
        return True
    return state in STEPS and (desired in STEPS or (job and desired == "complete"))


def snapshot(service: dict[str, Any], tasks: list[dict[str, Any]],
             nodes: list[dict[str, Any]]) -> Snapshot:
    down = {n.get("ID") for n in nodes if (n.get("Status") or {}).get("State") == "down"}
    mode = (service.get("Spec") or {}).get("Mode") or {}
    job = "ReplicatedJob" in mode or "GlobalJob" in mode
    tasks = [t for t in tasks if (t.get("NodeID") not in down or not t.get("NodeID")) and
             counts(t, job)]
    if "Replicated" in mode or "ReplicatedJob" in mode:
        return _replicated(mode, tasks)
    return _global(mode, tasks)


def _replicated(mode: dict[str, Any], tasks: list[dict[str, Any]]) -> Snapshot:
    job = "ReplicatedJob" in mode
    total = int((mode.get("ReplicatedJob") or {}).get("TotalCompletions", 0) if job else
                (mode.get("Replicated") or {}).get("Replicas", 1))
    slots: dict[int, list[dict[str, Any]]] = {}
    for t in tasks:
        # the API numbers a replicated job's slots from 0, as Docker's does
        slot = int(t.get("Slot") or 0) + job
        if 0 < slot <= total:
            slots.setdefault(slot, []).append(t)
    snap = Snapshot(total=total, job=job)
    goal = "complete" if job else "running"
    for slot in range(1, total + 1):
        if slot not in slots:
            continue
        group = slots[slot]
        state = goal if job and any(task_state(t) == goal for t in group) else \
            task_state(choose(group))
        snap.lines.append((f"{slot}/{total}", state))
        snap.done += state == goal
    snap.converged = snap.done == total
    return snap


def _global(mode: dict[str, Any], tasks: list[dict[str, Any]]) -> Snapshot:
    job = "GlobalJob" in mode
    by_node: dict[str, list[dict[str, Any]]] = {}
    for t in tasks:
        if t.get("NodeID"):
            by_node.setdefault(t["NodeID"], []).append(t)
    snap = Snapshot(total=len(by_node), job=job)
    goal = "complete" if job else "running"
    for node_id in sorted(by_node):
        state = task_state(choose(by_node[node_id]))
        snap.lines.append((truncate_id(node_id), state))
        snap.done += state == goal
    snap.converged = snap.total > 0 and snap.done == snap.total
    return snap


class Printer:
    """On a terminal, redraws the block in place; otherwise prints only what changed."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self.shown: list[str] = []

    def show(self, lines: list[str]) -> None:
        if self.quiet or lines == self.shown:
            return
        if self.tty:
            if self.shown:
                click.echo(f"\x1b[{len(self.shown)}A", nl=False)
            lines = lines + [""] * (len(self.shown) - len(lines))  # clear a longer old block
            for line in lines:
                click.echo("\x1b[2K" + line)
        else:
            old = set(self.shown)
            for line in lines:
                if line not in old:
                    click.echo(line)
        self.shown = lines

    def say(self, line: str) -> None:
        if not self.quiet:
            click.echo(line)
            if self.tty:  # the block to redraw is now above this line: start a new one
                self.shown = []


def render(snap: Snapshot, rolling_back: bool) -> list[str]:
    what = "rolling back update: " if rolling_back else ""
    noun = "tasks completed" if snap.job else "tasks"
    out = [f"overall progress: {what}{snap.done} out of {snap.total} {noun}"]
    out += [f"{label}: {state:<10} {bar(state)}".rstrip() for label, state in snap.lines]
    return out


def _update_state(service: dict[str, Any]) -> tuple[str, str]:
    status = service.get("UpdateStatus") or {}
    return str(status.get("State", "")), str(status.get("Message", ""))


def monitor_ns(service: dict[str, Any]) -> int:
    spec = service.get("Spec") or {}
    config = spec.get("UpdateConfig") or {}
    value = config.get("Monitor")
    return DEFAULT_MONITOR_NS if value is None else int(value)


def _check_update(state: str, message: str, rollback: bool) -> None:
    if state == "paused":
        raise CommandFailed(f"service update paused: {message}")
    if state == "rollback_paused":
        raise CommandFailed(f"service rollback paused: {message}")
    if state == "rollback_completed" and not rollback:
        raise CommandFailed(f"service rolled back: {message}")


def wait(client: Client, service_id: str, quiet: bool = False, rollback: bool = False,
         poll: float = POLL_SECONDS) -> None:
    """Poll until the service converges; raise CommandFailed if its update fails."""
    printer = Printer(quiet)
    stable_since: float | None = None
    said_rollback = ""
    filters = {"_up-to-date": {"true": True}, "service": {service_id: True}}
    while True:
        service = client.get(f"/services/{service_id}", insertDefaults=False)
        tasks = client.get("/tasks", filters=filters) or []
        nodes = client.get("/nodes") or []
        state, message = _update_state(service)
        if state == "rollback_started" and said_rollback != message:
            rollback, said_rollback = True, message
            printer.say(f"rollback: {message}")
        _check_update(state, message, rollback)
        snap = snapshot(service, tasks, nodes)
        lines = render(snap, rollback)
        monitor = monitor_ns(service) / 1e9
        if not snap.converged:
            stable_since = None
        elif snap.job:
            printer.show(lines + ["job complete"])
            return
        elif stable_since is None:
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= monitor:
            printer.show(lines + [f"verify: Service {service_id} converged"])
            return
        if stable_since is not None:
            lines.append(f"verify: Waiting {monitor:g} seconds to verify that tasks are "
                         "stable...")
        printer.show(lines)
        if state == "completed" and not snap.converged:
            return
        time.sleep(poll)
