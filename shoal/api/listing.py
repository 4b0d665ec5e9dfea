"""What the list endpoints (`GET /services`, `GET /tasks`) reuse from one request to the next,
so that 50 clients listing a large cluster do not convert every object to JSON, or count
every task of every service, on each request.

- Encoded JSON per object. Objects in a store view are never changed in place (a write puts
  a new object), so an object's JSON stays right for as long as the store holds that very
  object: the cache keeps the object beside its bytes and a hit is `cached is current`.
  Entries of objects gone from the store are dropped when the cache grows past twice what
  was last listed.
- Whole `GET /services` answers, per filter and status flag, while no service (and, with
  ServiceStatus, no task) changed.
- Encoded task specs, by their serialized protobuf: a service's tasks share one.
- ServiceStatus per service. It depends on the service and all of its tasks, so it is kept
  with the store version it was counted at, and a store watcher notes, for every applied
  batch, the store version at which each service or one of its tasks last changed; a count
  is reused while nothing of its service changed after it. (The watcher runs just after the
  new view is visible, on the applying thread: in that window a reader may be given the
  count of the version before, as if it had read a moment earlier. A writer's own request
  returns after the watcher ran, so it reads its own write.)

Responses are byte for byte what `json.dumps` of the whole list gives (aiohttp's
`json_response`): items joined with ", ", keys in the converters' order.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from manager.store.memory import Event, MemoryStore, StoreView
from proto import objects_pb2 as pb
from shoal.api import convert
from shoal.api import service_json as sjson
from shoal.api.status import service_status


def json_body(parts: Iterable[bytes]) -> bytes:
    """A JSON array of already encoded items, as `json.dumps(list)` writes it."""
    return b"[" + b", ".join(parts) + b"]"


def json_response(body: bytes) -> web.Response:
    """As `web.json_response` sends it."""
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def json_list(parts: Iterable[bytes]) -> web.Response:
    return json_response(json_body(parts))


T = TypeVar("T")

# Objects converted between two turns of the event loop: a list of 100,000 tasks converts
# for seconds the first time, and the loop also serves heartbeats and Raft (fairness.py).
CHUNK = 1000


async def parts_in_turns(items: Sequence[T], encode: Callable[[T], bytes]) -> list[bytes]:
    """Each item's JSON, letting the loop turn after every CHUNK items. The items come from
    one store view, which no write changes, so the answer is one version whatever runs in
    between."""
    parts: list[bytes] = []
    for start in range(0, len(items), CHUNK):
        if start:
            await asyncio.sleep(0)
        parts.extend(encode(item) for item in items[start:start + CHUNK])
    return parts


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


class ObjectJSON:
    """Encoded JSON per stored object, valid while the store holds that same object."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, Any], tuple[Any, Any]] = {}

    def get(self, obj: Any, variant: Any, encode: Callable[[], Any]) -> Any:
        key = (obj.id, variant)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is obj:
            return entry[1]
        data = encode()
        self._entries[key] = (obj, data)
        return data

    def forget_gone(self, stored: int, live: Callable[[], Iterable[str]]) -> None:
        """Drop the entries of objects no longer stored once the cache holds more than
        twice as many as the store (`stored` objects, whose IDs `live` gives)."""
        if len(self._entries) > 2 * stored + 64:
            ids = set(live())
            self._entries = {k: v for k, v in self._entries.items() if k[0] in ids}


class StatusCounts:
    """ServiceStatus per service, counted again only after its service or a task of it
    changed (see the module's docstring)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._changed: dict[str, int] = {}  # service ID → store version of its last change
        self._counted: dict[str, tuple[Any, int, bytes]] = {}  # → (service, version, status)
        self.last_change = 0  # store version of the last change of any service or task
        store.watch(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        version = self._store.version  # at least the batch's own: later is only cautious
        for event in events:
            if event.table in ("task", "service"):
                self.last_change = version
            if event.table == "task":
                for obj in (event.old, event.new):
                    if obj is not None:
                        self._changed[obj.service_id] = version
            elif event.table == "service":
                obj = event.new if event.new is not None else event.old
                if obj is not None:
                    self._changed[obj.id] = version

    def status(self, view: StoreView, svc: pb.Service) -> bytes:
        """The service's ServiceStatus, encoded."""
        counted = self._counted.get(svc.id)
        if counted is not None and counted[0] is svc and \
                self._changed.get(svc.id, 0) <= counted[1]:
            return counted[2]
        status = _dumps(service_status(svc, view.tasks_of_service(svc.id)))
        self._counted[svc.id] = (svc, view.version, status)
        return status

    def forget_gone(self, view: StoreView) -> None:
        if len(self._counted) > 2 * len(view.table(pb.Service)) + 64:
            live = view.table(pb.Service)
            self._counted = {k: v for k, v in self._counted.items() if k in live}
            # In place: the watcher writes to this dict from the applying thread (list() of
            # a dict and pop() are atomic; a copy would lose what it wrote meanwhile).
            for key in [k for k in list(self._changed) if k not in live]:
                self._changed.pop(key, None)


class Listing:
    """The caches of one store (one per manager the API has served)."""

    BODIES = 16  # whole `GET /services` answers kept (one per filter and status flag)
    SPECS = 4096  # task specs' JSON kept (most services' tasks share one or two)

    def __init__(self, store: MemoryStore) -> None:
        self.services = ObjectJSON()
        self.tasks = ObjectJSON()
        self.nodes = ObjectJSON()
        self.counts = StatusCounts(store)
        # (filters, status) → (the services table, store version, body)
        self._bodies: dict[tuple[str, bool], tuple[Any, int, bytes]] = {}
        self._jobs: tuple[Any, set[str]] = (None, set())
        self._specs: dict[bytes, bytes] = {}  # a serialized TaskSpec → its JSON

    def services_body(self, view: StoreView, query: tuple[str, bool],
                      build: Callable[[], bytes]) -> bytes:
        """A whole `GET /services` answer, made again only when a service changed (its
        table is another object then) or, with ServiceStatus, when any task changed."""
        table = view.tables["service"]
        found = self._bodies.get(query)
        if found is not None and found[0] is table and \
                (not query[1] or self.counts.last_change <= found[1]):
            return found[2]
        body = build()
        self._bodies.pop(query, None)
        if len(self._bodies) >= self.BODIES:
            self._bodies.pop(next(iter(self._bodies)))
        self._bodies[query] = (table, view.version, body)
        return body

    def jobs(self, view: StoreView) -> set[str]:
        """The IDs of the job services (made again when a service changed)."""
        table = view.tables["service"]
        if self._jobs[0] is not table:
            self._jobs = (table, {s.id for s in table.values()
                                  if sjson.mode_name(s.spec).endswith("_job")})
        return self._jobs[1]

    def service_parts(self, svc: pb.Service) -> tuple[bytes, bytes]:
        """The service's JSON in two: up to where ServiceStatus goes (no closing brace), and
        the rest (JobStatus if any, and the brace)."""
        def encode() -> tuple[bytes, bytes]:
            whole = sjson.service_json(svc)
            job = whole.pop("JobStatus", None)
            tail = (b", \"JobStatus\": " + _dumps(job) if job is not None else b"") + b"}"
            return _dumps(whole)[:-1], tail
        parts: tuple[bytes, bytes] = self.services.get(svc, None, encode)
        return parts

    def service(self, svc: pb.Service, status: bytes | None) -> bytes:
        """The service's JSON, with its encoded ServiceStatus if given."""
        head, tail = self.service_parts(svc)
        if status is None:
            return head + tail
        return head + b", \"ServiceStatus\": " + status + tail

    def task(self, task: pb.Task, job: bool) -> bytes:
        def encode() -> bytes:
            before, after = sjson.task_json_parts(task, job)
            return (_dumps(before)[:-1] + b", \"Spec\": " + self.task_spec(task.spec) + b", "
                    + _dumps(after)[1:])
        data: bytes = self.tasks.get(task, job, encode)
        return data

    def node(self, node: pb.Node, cluster: pb.Cluster) -> bytes:
        """The node's JSON; its TLSInfo is the cluster's root CA (the variant)."""
        ca_pem = cluster.root_ca.ca_cert_pem
        data: bytes = self.nodes.get(node, ca_pem, lambda: _dumps(
            convert.node_json(node, convert.tls_info(cluster))))
        return data

    def task_spec(self, spec: pb.TaskSpec) -> bytes:
        """A task spec's JSON, encoded once for all the tasks made from the same spec."""
        key = spec.SerializeToString(deterministic=True)
        found = self._specs.get(key)
        if found is None:
            if len(self._specs) >= self.SPECS:
                self._specs.clear()
            found = self._specs[key] = _dumps(sjson.task_spec_json(spec))
        return found


_LISTINGS: weakref.WeakKeyDictionary[MemoryStore, Listing] = weakref.WeakKeyDictionary()


def listing_of(store: MemoryStore) -> Listing:
    found = _LISTINGS.get(store)
    if found is None:
        found = _LISTINGS[store] = Listing(store)
    return found
