"""/services, /services/create, /services/{id}, /services/{id}/update, DELETE /services/{id},
and /distribution/{image}/json (which Shoal does not serve: the CLI then uses the image
unpinned)."""

from __future__ import annotations

import asyncio
import json
import time
import weakref

from aiohttp import web

from manager.controlapi.services import ServiceControl, find_service, visible
from manager.store.view import StoreView
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api import convert_service as conv
from shoal.api import service_json as sjson
from shoal.api.context import manager_of
from shoal.api.listing import json_body, json_response, listing_of
from shoal.api.request import bool_param, filters_param, int_param, parse_json
from shoal.errors import InvalidRequest

_SERVICE_FILTERS = {"id", "name", "label", "mode"}
_MODES = {"replicated": "replicated", "global": "global", "replicated-job": "replicated_job",
          "global-job": "global_job"}


def label_match(labels: dict[str, str], wanted: list[str]) -> bool:
    """Docker's label filter: every `key` or `key=value` given must match."""
    for want in wanted:
        key, sep, value = want.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def service_matches(svc: pb.Service, filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if key == "label":
            if not label_match(dict(svc.spec.annotations.labels), values):
                return False
            continue
        if key == "mode" and any(v not in _MODES for v in values):
            raise InvalidRequest(f"invalid mode filter {values}: expected "
                                 f"{', '.join(_MODES)}")
        checks = {"id": lambda v: svc.id.startswith(v),
                  "name": lambda v: svc.spec.annotations.name.startswith(v),
                  "mode": lambda v: sjson.mode_name(svc.spec) == _MODES[v]}
        if not any(checks[key](v) for v in values):
            return False
    return True


async def list_services(request: web.Request) -> web.Response:
    """From one store view, without copies; each service's JSON and ServiceStatus come from
    the listing caches (shoal/api/listing.py) unless the service or its tasks changed."""
    mgr = manager_of(request)
    filters = filters_param(request.query.get("filters"))
    unknown = set(filters) - _SERVICE_FILTERS
    if unknown:
        raise InvalidRequest(f"invalid filter '{sorted(unknown)[0]}': services filter by "
                             f"{', '.join(sorted(_SERVICE_FILTERS))}")
    view = mgr.store.view()
    listing = listing_of(mgr.store)
    with_status = bool_param(request.query.get("status"))

    def build() -> bytes:
        stored = view.list(pb.Service)
        services = [s for s in visible(stored) if service_matches(s, filters)]
        services.sort(key=lambda s: s.spec.annotations.name)
        parts = [listing.service(s, listing.counts.status(view, s) if with_status else None)
                 for s in services]
        listing.services.forget_gone(len(stored), lambda: (s.id for s in stored))
        if with_status:
            listing.counts.forget_gone(view)
        return json_body(parts)

    query = (json.dumps(filters, sort_keys=True), with_status)
    return json_response(listing.services_body(view, query, build))


def service_of(view: StoreView, services: list[pb.Service], ref: str) -> pb.Service:
    """`find_service` (full ID, then name, then unique ID prefix), with the first two from
    the store's table and name index."""
    found = view.get(pb.Service, ref) or view.by_name(pb.Service, ref)
    if found is not None and not found.pending_delete:
        return found
    return find_service(services, ref)


async def inspect_service(request: web.Request) -> web.Response:
    view = manager_of(request).store.view()
    svc = service_of(view, view.list(pb.Service), request.match_info["ref"])
    defaults = bool_param(request.query.get("insertDefaults"))
    return web.json_response(sjson.service_json(svc, defaults=defaults))


# Creates through one node are checked and written one at a time, so two requests for the
# same name can't both pass the name check (the store itself does not index names).
_CREATE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
    weakref.WeakKeyDictionary()


def _create_lock() -> asyncio.Lock:
    return _CREATE_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())


async def create_service(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    spec = conv.service_spec(parse_json(await request.read()))
    async with _create_lock():
        svc = ServiceControl(mgr.store).create(spec)
        await mgr.write((store_pb2.CREATE, svc))
    return web.json_response({"ID": svc.id, "Warnings": None}, status=201)


async def update_service(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    version = int_param(request.query.get("version"), "version")
    if version is None:
        raise InvalidRequest("service update needs ?version=N (the service's Version.Index, "
                             "from GET /services/{id})")
    rollback = request.query.get("rollback", "")
    if rollback not in ("", "none", "previous"):
        raise InvalidRequest(f"invalid rollback {rollback!r}: expected \"previous\"")
    body = parse_json(await request.read())
    spec = None if rollback == "previous" else conv.service_spec(body)
    svc = ServiceControl(mgr.store).update(request.match_info["ref"], version, spec,
                                           time.time_ns())
    await mgr.update(svc)
    return web.json_response({"Warnings": None})


async def remove_service(request: web.Request) -> web.Response:
    """Not versioned (as Docker's): a write of the allocator or orchestrator that lands
    between the read and this one is read again, not an "update out of sequence"."""
    mgr = manager_of(request)
    control = ServiceControl(mgr.store)
    ref = request.match_info["ref"]
    svc = control.get(ref)

    def mark(current: pb.Service) -> bool:
        if current.pending_delete:
            return False
        current.pending_delete = True
        return True

    if not await mgr.modify(pb.Service, svc.id, mark):
        control.get(ref)  # gone meanwhile: its 404
    return web.Response(status=200)


async def distribution(request: web.Request) -> web.Response:
    image = request.match_info["image"]
    return web.json_response({"message": (
        f"Shoal does not query registries: image {image} is used as given (unpinned) and each "
        "node's engine pulls it when a task starts")}, status=404)


ROUTES = [
    ("GET", "/services", list_services),
    ("POST", "/services/create", create_service),
    ("GET", "/services/{ref}", inspect_service),
    ("POST", "/services/{ref}/update", update_service),
    ("DELETE", "/services/{ref}", remove_service),
    ("GET", "/distribution/{image:.+}/json", distribution),
]
