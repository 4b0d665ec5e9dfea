"""The cluster's state as metric families, computed from one store view when Prometheus
scrapes (pure: a view in, families out). Every known label value is listed, zero or not, so
a series does not vanish when its count drops to 0."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from manager.scheduler.filters import wants_to_run
from manager.store.memory import StoreView
from proto import objects_pb2 as pb
from shoal.api.convert import AVAILABILITY, NODE_STATE
from shoal.api.status import service_status

TASK_STATE = {value: name.lower() for name, value in pb.TaskState.items()}

# Why a task can't be placed, from the scheduler's "no suitable node (...)" text: one
# label value per filter (the free text names nodes, ports and constraints: unbounded).
_REASONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^node (down|disconnected|not ready)"), "node_not_ready"),
    (re.compile(r"^node drained"), "node_drained"),
    (re.compile(r"^node paused"), "node_paused"),
    (re.compile(r"^node \S+ not found"), "node_not_found"),
    (re.compile(r"^insufficient CPU"), "insufficient_cpu"),
    (re.compile(r"^insufficient memory"), "insufficient_memory"),
    (re.compile(r".* not met"), "constraint"),
    (re.compile(r"^platform .* not supported"), "platform"),
    (re.compile(r"^host port .* in use"), "host_port"),
    (re.compile(r"^max replicas per node"), "max_replicas"),
    (re.compile(r"^no nodes in the cluster"), "no_nodes"),
]
REASONS = sorted({label for _, label in _REASONS} | {"invalid_spec"})
_PREFIX = "no suitable node ("
_COUNT = re.compile(r" on \d+ nodes?$")


def unplaceable_reasons(err: str) -> list[str]:
    """The reason labels of a pending task's status.err (several when nodes fail in
    different ways); [] when it is not the scheduler's "no suitable node" message."""
    if not err.startswith(_PREFIX) or not err.endswith(")"):
        return []
    parts = err[len(_PREFIX):-1].split("; ")
    out: list[str] = []
    for part in parts:
        text = _COUNT.sub("", part)
        label = next((lab for pat, lab in _REASONS if pat.match(text)), "invalid_spec")
        if label not in out:
            out.append(label)
    return out


def node_families(nodes: Iterable[pb.Node]) -> Metric:
    fam = GaugeMetricFamily("shoal_nodes", "Nodes in the swarm by state and availability.",
                            labels=["state", "availability"])
    counts = Counter((n.status.state, n.spec.availability) for n in nodes)
    for state, state_name in NODE_STATE.items():
        for avail, avail_name in AVAILABILITY.items():
            fam.add_metric([state_name, avail_name], counts[(state, avail)])
    return fam


def task_families(tasks: Iterable[pb.Task]) -> list[Metric]:
    by_state = GaugeMetricFamily("shoal_tasks", "Tasks in the store by their observed state.",
                                 labels=["state"])
    unplaceable = GaugeMetricFamily(
        "shoal_scheduler_unplaceable_tasks",
        "Pending tasks no node can take, by reason (a task whose candidate nodes fail in "
        "different ways counts under each reason).", labels=["reason"])
    states: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    for task in tasks:
        states[task.status.state] += 1
        if task.status.state == pb.PENDING and wants_to_run(task) and task.status.err:
            reasons.update(unplaceable_reasons(task.status.err))
    for state, name in TASK_STATE.items():
        by_state.add_metric([name], states[state])
    for reason in REASONS:
        unplaceable.add_metric([reason], reasons[reason])
    return [by_state, unplaceable]


def service_families(services: Iterable[pb.Service],
                     tasks_of: dict[str, list[pb.Task]]) -> list[Metric]:
    labels = ["service", "service_id"]
    desired = GaugeMetricFamily("shoal_service_desired_tasks",
                                "Tasks a service wants running (REPLICAS' second number).",
                                labels=labels)
    running = GaugeMetricFamily("shoal_service_running_tasks",
                                "Up-to-date tasks of a service that are running.",
                                labels=labels)
    for svc in services:
        status = service_status(svc, tasks_of.get(svc.id, []))
        key = [svc.spec.annotations.name, svc.id]
        desired.add_metric(key, status["DesiredTasks"])
        running.add_metric(key, status["RunningTasks"])
    return [desired, running]


def cluster_families(view: StoreView) -> list[Metric]:
    """Every cluster-state family of one store view."""
    tasks = view.list(pb.Task)
    tasks_of: dict[str, list[pb.Task]] = {}
    for task in tasks:
        tasks_of.setdefault(task.service_id, []).append(task)
    return [node_families(view.list(pb.Node)), *task_families(tasks),
            *service_families(view.list(pb.Service), tasks_of)]
