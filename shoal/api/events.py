"""GET /events: the swarm's changes as Docker's event stream (`docker events`).

dockerd turns swarmkit's store watch into events of scope "swarm" for nodes, services,
networks, secrets and configs (moby daemon/events.go, logClusterEvent); tasks and the cluster
object give none. Here the manager's ChangeLog (manager/changes.py) is the watch. Filters
follow moby's daemon/events/filter.go.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from manager.changes import Change
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api import convert
from shoal.api.context import manager_of
from shoal.api.request import filters_param
from shoal.api.service_json import UPDATE_STATE
from shoal.errors import InvalidRequest

Attributes = dict[str, str]

# How often an idle stream checks that its client is still there.
IDLE_CHECK_S = 5.0


def _name(obj: Any) -> Attributes:
    return {"name": obj.spec.annotations.name}


def _changed(attrs: Attributes, key: str, old: str, new: str) -> None:
    if old != new:
        attrs[f"{key}.old"], attrs[f"{key}.new"] = old, new


def _service(new: pb.Service, old: pb.Service | None) -> Attributes:
    attrs = _name(new)
    if old is None:
        return attrs
    _changed(attrs, "image", old.spec.task.container.image, new.spec.task.container.image)
    if new.spec.HasField("replicated") and old.spec.HasField("replicated"):
        _changed(attrs, "replicas", str(old.spec.replicated.replicas),
                 str(new.spec.replicated.replicas))
    if new.HasField("update_status") and new.update_status.state:
        state = UPDATE_STATE[new.update_status.state]
        if not old.HasField("update_status") or not old.update_status.state:
            attrs["updatestate.new"] = state
        else:
            _changed(attrs, "updatestate", UPDATE_STATE[old.update_status.state], state)
    return attrs


def _node(new: pb.Node, old: pb.Node | None) -> Attributes:
    attrs = {"name": new.spec.annotations.name or new.description.hostname}
    if old is None:
        return attrs
    _changed(attrs, "availability", convert.AVAILABILITY[old.spec.availability],
             convert.AVAILABILITY[new.spec.availability])
    _changed(attrs, "role", convert.ROLE[old.role], convert.ROLE[new.role])
    _changed(attrs, "state", convert.NODE_STATE[old.status.state],
             convert.NODE_STATE[new.status.state])
    if new.manager_status.addr and old.manager_status.addr:
        _changed(attrs, "leader", str(old.manager_status.leader).lower(),
                 str(new.manager_status.leader).lower())
        _changed(attrs, "reachability", convert.REACHABILITY[old.manager_status.reachability],
                 convert.REACHABILITY[new.manager_status.reachability])
    return attrs


def _named(new: Any, old: Any) -> Attributes:
    return _name(new)


# Store table → (event Type, the Actor's attributes from the new and the old object). A
# table not listed here (task, cluster) gives no event, as in Docker.
EVENT_TYPES: dict[str, tuple[str, Callable[[Any, Any], Attributes]]] = {
    "service": ("service", _service), "node": ("node", _node),
    "network": ("network", _named), "secret": ("secret", _named),
    "config": ("config", _named),
}


def message(change: Change) -> dict[str, Any] | None:
    """One store change as the JSON object dockerd streams, or None if Docker shows none."""
    event = change.event
    kind = EVENT_TYPES.get(event.table)
    if kind is None:
        return None
    event_type, attributes = kind
    obj: Any
    if event.new is None:
        action, obj, attrs, ns = "remove", event.old, _name_of(event.old), change.applied_ns
    elif event.old is None or event.action == store_pb2.CREATE:
        action, obj, ns = "create", event.new, event.new.meta.created_at_ns
        attrs = attributes(event.new, None)
    else:
        action, obj, ns = "update", event.new, event.new.meta.updated_at_ns
        attrs = attributes(event.new, event.old)
    ns = ns or change.applied_ns
    attrs = dict(sorted(attrs.items()))  # as Go writes a map: keys in order
    return {"Type": event_type, "Action": action, "Actor": {"ID": obj.id, "Attributes": attrs},
            "scope": "swarm", "time": ns // 1_000_000_000, "timeNano": ns}


def _name_of(obj: Any) -> Attributes:
    if isinstance(obj, pb.Node):
        return {"name": obj.spec.annotations.name or obj.description.hostname}
    return _name(obj)


# Filters that match an event's actor by ID or name prefix, whatever its type (moby's
# fuzzyMatchName: `--filter node=X` also drops a service event that does not match X).
_ACTOR_FILTERS = ("container", "image", "plugin", "volume", "network", "node", "service",
                  "secret", "config", "daemon")


@dataclass(frozen=True)
class EventFilter:
    args: Mapping[str, list[str]]

    def _exact(self, key: str, value: str) -> bool:
        wanted = self.args.get(key)
        return not wanted or value in wanted

    def _fuzzy(self, key: str, value: str) -> bool:
        wanted = self.args.get(key)
        return not wanted or any(value.startswith(w) for w in wanted)

    def _labels(self, attrs: Mapping[str, str]) -> bool:
        for want in self.args.get("label", []):
            key, eq, value = want.partition("=")
            if key not in attrs or (eq and attrs[key] != value):
                return False
        return True

    def include(self, msg: Mapping[str, Any]) -> bool:
        actor = msg["Actor"]
        name = actor["Attributes"].get("name", "")
        return (self._exact("event", msg["Action"]) and self._exact("type", msg["Type"])
                and self._exact("scope", msg["scope"])
                and all(self._fuzzy(k, actor["ID"]) or self._fuzzy(k, name)
                        for k in _ACTOR_FILTERS)
                and self._labels(actor["Attributes"]))


def parse_time(value: str | None, name: str) -> int | None:
    """`since`/`until` as the docker CLI sends them: Unix seconds[.nanoseconds] → ns."""
    if not value:
        return None
    secs, _, frac = value.partition(".")
    if not secs.lstrip("-").isdigit() or (frac and not frac.isdigit()):
        raise InvalidRequest(f"invalid {name} {value!r}: expected a Unix timestamp "
                             "(seconds[.nanoseconds])")
    return int(secs) * 1_000_000_000 + int((frac + "000000000")[:9])


def _in_window(msg: Mapping[str, Any], since: int | None, until: int | None) -> bool:
    ns = msg["timeNano"]
    return (since is None or ns >= since) and (until is None or ns <= until)


async def events(request: web.Request) -> web.StreamResponse:
    filt = EventFilter(filters_param(request.query.get("filters")))
    since = parse_time(request.query.get("since"), "since")
    until = parse_time(request.query.get("until"), "until")
    mgr = manager_of(request)  # swarm events come from a manager's store: 503 elsewhere
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[Change]] = asyncio.Queue()

    def on_changes(changes: list[Change]) -> None:  # on the applying thread
        if not loop.is_closed():  # the API shut down before this stream's cleanup ran
            loop.call_soon_threadsafe(queue.put_nowait, changes)

    kept, cancel = mgr.changes.subscribe(on_changes)
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)  # the client waits for the headers before anything
        # dockerd replays its kept events only when asked for a start or an end time.
        replay = kept if since is not None or until is not None else []
        await _send(response, replay, filt, since, until)
        while until is None or time.time_ns() < until:
            wait = IDLE_CHECK_S if until is None else \
                min(IDLE_CHECK_S, (until - time.time_ns()) / 1e9)
            try:
                changes = await asyncio.wait_for(queue.get(), max(wait, 0.0))
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            await _send(response, changes, filt, since, until)
    except ConnectionResetError:  # the client went away (`docker events` ended): done
        pass
    finally:
        cancel()
    return response


async def _send(response: web.StreamResponse, changes: list[Change], filt: EventFilter,
                since: int | None, until: int | None) -> None:
    lines = []
    for change in changes:
        msg = message(change)
        if msg is not None and _in_window(msg, since, until) and filt.include(msg):
            lines.append(json.dumps(msg) + "\n")
    if lines:
        await response.write("".join(lines).encode())


ROUTES = [("GET", "/events", events)]
