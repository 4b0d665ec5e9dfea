"""/tasks and /tasks/{id}, with Docker's filters (service, node, name, id, label,
desired-state, _up-to-date)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from manager.controlapi.lookup import resolve
from manager.controlapi.nodes import find_node
from manager.errors import InvalidArgument
from manager.rules.uptodate import is_current
from manager.store.view import StoreView
from proto import objects_pb2 as pb
from shoal.api import service_json as sjson
from shoal.api.listing import json_list, listing_of, parts_in_turns
from shoal.api.request import bool_param, filters_param
from shoal.api.services import label_match, manager_of, service_of
from shoal.errors import InvalidRequest

_TASK_FILTERS = {"service", "node", "name", "id", "label", "desired-state", "_up-to-date",
                 "runtime"}
_STATES = {name: value for value, name in sjson.TASK_STATES.items()}

TaskCheck = Callable[[pb.Task], bool]


def check_keys(filters: dict[str, list[str]]) -> None:
    unknown = set(filters) - _TASK_FILTERS
    if unknown:
        raise InvalidRequest(f"invalid filter '{sorted(unknown)[0]}': tasks filter by "
                             f"{', '.join(sorted(_TASK_FILTERS - {'_up-to-date'}))}")


@dataclass(frozen=True)
class Refs:
    """The services and nodes a filter names, resolved (None: not filtered by them)."""

    services: set[str] | None
    nodes: set[str] | None

    @classmethod
    def of(cls, view: StoreView, filters: dict[str, list[str]],
           services: list[pb.Service]) -> Refs:
        """Services and nodes are resolved by ID, name or ID prefix; one that does not exist
        is a 404, as Docker's."""
        service_ids = {service_of(view, services, ref).id for ref in filters["service"]} \
            if "service" in filters else None
        node_ids = None
        if "node" in filters:
            nodes = view.list(pb.Node)
            node_ids = {find_node(nodes, ref).id for ref in filters["node"]}
        return cls(service_ids, node_ids)


def task_filter(filters: dict[str, list[str]], services: list[pb.Service],
                refs: Refs) -> TaskCheck:
    """One predicate for all filters: values of one key are ORed, keys are ANDed (labels:
    every one must match)."""
    check_keys(filters)
    checks: list[TaskCheck] = []
    if refs.services is not None:
        ids = refs.services
        checks.append(lambda t: t.service_id in ids)
    if refs.nodes is not None:
        node_ids = refs.nodes
        checks.append(lambda t: t.node_id in node_ids)
    if "name" in filters:
        names = filters["name"]
        checks.append(lambda t: any(t.annotations.name.startswith(n) for n in names))
    if "id" in filters:
        prefixes = filters["id"]
        checks.append(lambda t: any(t.id.startswith(p) for p in prefixes))
    if "label" in filters:
        labels = filters["label"]
        checks.append(lambda t: label_match(dict(t.service_labels) | dict(t.annotations.labels),
                                            labels))
    if "desired-state" in filters:
        checks.append(_desired(filters["desired-state"]))
    if any(bool_param(v) for v in filters.get("_up-to-date", [])):
        by_id = {s.id: s for s in services}
        checks.append(lambda t: t.service_id in by_id and is_current(by_id[t.service_id], t))
    if any(v != "container" for v in filters.get("runtime", [])):
        checks.append(lambda t: False)
    return lambda t: all(check(t) for check in checks)


def _desired(values: list[str]) -> TaskCheck:
    wanted = set()
    for value in values:
        if value.lower() not in _STATES:
            raise InvalidArgument(f"invalid desired-state filter {value!r}: expected one of "
                                  f"{', '.join(_STATES)}")
        wanted.add(_STATES[value.lower()])
    return lambda t: t.desired_state in wanted


def _jobs(services: list[pb.Service]) -> set[str]:
    return {s.id for s in services if sjson.mode_name(s.spec).endswith("_job")}


def candidates(view: StoreView, refs: Refs) -> Iterable[pb.Task]:
    """The tasks a filter can match, from the store's indexes when it names services or
    nodes (each still goes through the whole filter)."""
    if refs.services is not None:
        return itertools.chain.from_iterable(view.tasks_of_service(i) for i in refs.services)
    if refs.nodes is not None:
        return itertools.chain.from_iterable(view.tasks_on_node(i) for i in refs.nodes)
    return view.list(pb.Task)


async def list_tasks(request: web.Request) -> web.Response:
    """From one store view, without copies; each task's JSON comes from the listing cache
    (shoal/api/listing.py) unless the task changed."""
    mgr = manager_of(request)
    view = mgr.store.view()
    services = view.list(pb.Service)
    filters = filters_param(request.query.get("filters"))
    check_keys(filters)
    refs = Refs.of(view, filters, services)
    check = task_filter(filters, services, refs)
    tasks = sorted((t for t in candidates(view, refs) if check(t)),
                   key=lambda t: (t.meta.created_at_ns, t.id))
    listing = listing_of(mgr.store)
    jobs = listing.jobs(view)
    parts = await parts_in_turns(tasks, lambda t: listing.task(t, t.service_id in jobs))
    stored = view.table(pb.Task)
    listing.tasks.forget_gone(len(stored), stored.keys)
    return json_list(parts)


async def inspect_task(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    view = mgr.store.view()
    ref = request.match_info["task_id"]
    task = view.get(pb.Task, ref) or resolve(view.list(pb.Task), ref, "task")
    jobs = _jobs(view.list(pb.Service))
    return web.json_response(sjson.task_json(task, job=task.service_id in jobs))


ROUTES = [
    ("GET", "/tasks", list_tasks),
    ("GET", "/tasks/{task_id}", inspect_task),
]
