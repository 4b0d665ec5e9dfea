"""/secrets and /configs: create, list, inspect, update (labels), remove, in Docker's JSON
shapes (`docker secret create NAME -`, docker-py's `client.secrets.create(...)`).

A secret's data goes in (base64, as Docker's []byte) and never comes out: inspect and list
show its name and labels only. A config's data is shown, as Docker does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from manager.controlapi.secrets import CONFIG, SECRET, Kind, ObjectControl
from proto import store_pb2
from shoal.api.context import manager_of
from shoal.api.convert import _meta
from shoal.api.request import fields, filters_param, int_param, parse_json
from shoal.api.services import label_match
from shoal.errors import InvalidRequest

_FILTERS = {"id", "name", "names", "label"}
_KINDS = {"secrets": SECRET, "configs": CONFIG}


def spec_from(kind: Kind, body: Any) -> Any:
    w = "SecretSpec" if kind is SECRET else "ConfigSpec"
    f = fields(body, {"Name": str, "Labels": dict, "Data": str, "Driver": dict,
                      "Templating": dict}, w)
    spec = kind.cls().spec  # an empty SecretSpec / ConfigSpec
    spec.annotations.name = f.get("Name", "")
    labels = f.get("Labels", {})
    if not all(isinstance(v, str) for v in labels.values()):
        raise InvalidRequest(f"{w}.Labels must map strings to strings")
    spec.annotations.labels.update(labels)
    try:
        spec.data = base64.b64decode(f.get("Data", ""), validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidRequest(f"{w}.Data must be base64: {err}") from None
    for name in ("Driver", "Templating"):
        driver = fields(f.get(name), {"Name": str, "Options": dict}, f"{w}.{name}")
        if not driver.get("Name"):
            continue
        if name == "Driver" and kind is CONFIG:
            raise InvalidRequest("configs have no driver: leave ConfigSpec.Driver out")
        target = spec.driver if name == "Driver" else spec.templating
        target.name = driver["Name"]
    return spec


def object_json(kind: Kind, obj: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"Name": obj.spec.annotations.name,
                            "Labels": dict(obj.spec.annotations.labels)}
    if kind is CONFIG:
        spec["Data"] = base64.b64encode(bytes(obj.spec.data)).decode()
    return _meta(obj) | {"Spec": spec}


def matches(obj: Any, filters: dict[str, list[str]]) -> bool:
    name = obj.spec.annotations.name
    checks = {"id": lambda v: obj.id.startswith(v), "name": lambda v: name.startswith(v),
              "names": lambda v: name == v}
    for key, values in filters.items():
        if key == "label":
            if not label_match(dict(obj.spec.annotations.labels), values):
                return False
        elif not any(checks[key](v) for v in values):
            return False
    return True


async def list_objects(kind: Kind, request: web.Request) -> web.Response:
    filters = filters_param(request.query.get("filters"))
    unknown = set(filters) - _FILTERS
    if unknown:
        raise InvalidRequest(f"invalid filter '{sorted(unknown)[0]}': {kind.name}s filter by "
                             f"{', '.join(sorted(_FILTERS))}")
    found = [o for o in ObjectControl(kind, manager_of(request).store).objects()
             if matches(o, filters)]
    found.sort(key=lambda o: o.spec.annotations.name)
    return web.json_response([object_json(kind, o) for o in found])


async def inspect_object(kind: Kind, request: web.Request) -> web.Response:
    obj = ObjectControl(kind, manager_of(request).store).get(request.match_info["ref"])
    return web.json_response(object_json(kind, obj))


# One create at a time through one node, so two requests can't both pass the name check
# (the store's unique names catch two managers racing).
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
    weakref.WeakKeyDictionary()


async def create_object(kind: Kind, request: web.Request) -> web.Response:
    mgr = manager_of(request)
    spec = spec_from(kind, parse_json(await request.read()))
    async with _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
        obj = ObjectControl(kind, mgr.store).create(spec)
        await mgr.write((store_pb2.CREATE, obj))
    return web.json_response({"ID": obj.id}, status=201)


async def update_object(kind: Kind, request: web.Request) -> web.Response:
    mgr = manager_of(request)
    version = int_param(request.query.get("version"), "version")
    if version is None:
        raise InvalidRequest(f"{kind.name} update needs ?version=N (the {kind.name}'s "
                             f"Version.Index, from GET /{kind.name}s/{{id}})")
    spec = spec_from(kind, parse_json(await request.read()))
    obj = ObjectControl(kind, mgr.store).update(request.match_info["ref"], version, spec)
    await mgr.update(obj)
    return web.Response(status=200)


async def remove_object(kind: Kind, request: web.Request) -> web.Response:
    mgr = manager_of(request)
    obj = ObjectControl(kind, mgr.store).remove(request.match_info["ref"])
    await mgr.write((store_pb2.DELETE, obj))
    return web.Response(status=204)


Handler = Callable[[Kind, web.Request], Awaitable[web.Response]]


def _for(kind: Kind, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await handler(kind, request)
    return handle


ROUTES = [
    (method, f"/{plural}{path}", _for(kind, handler))
    for plural, kind in _KINDS.items()
    for method, path, handler in (
        ("GET", "", list_objects),
        ("POST", "/create", create_object),
        ("GET", "/{ref}", inspect_object),
        ("POST", "/{ref}/update", update_object),
        ("DELETE", "/{ref}", remove_object),
    )
]
