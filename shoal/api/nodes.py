"""/nodes, /nodes/{id}, /nodes/{id}/update, DELETE /nodes/{id}."""

from __future__ import annotations

from aiohttp import web

from manager.controlapi.nodes import NodeControl
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api import convert
from shoal.api.context import manager_of
from shoal.api.listing import json_list, listing_of, parts_in_turns
from shoal.api.request import bool_param, filters_param, int_param, parse_json
from shoal.errors import InvalidRequest

_NODE_FILTERS = {"id", "label", "node.label", "membership", "name", "role"}


def node_matches(node: pb.Node, filters: dict[str, list[str]]) -> bool:
    checks = {
        "id": lambda v: node.id.startswith(v),
        "name": lambda v: node.description.hostname.startswith(v) or
        node.spec.annotations.name.startswith(v),
        "role": lambda v: convert.ROLE[node.spec.desired_role] == v,
        "membership": lambda v: v == "accepted",
        "label": lambda v: _label_match(dict(node.description.engine.labels), v),
        "node.label": lambda v: _label_match(dict(node.spec.annotations.labels), v),
    }
    return all(any(checks[key](v) for v in values) for key, values in filters.items())


def _label_match(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


async def list_nodes(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    filters = filters_param(request.query.get("filters"))
    unknown = set(filters) - _NODE_FILTERS
    if unknown:
        raise InvalidRequest(f"invalid filter '{sorted(unknown)[0]}'")
    # From the store's view (no copies), each node's JSON reused until the node changes:
    # dashboards and scripts poll this in clusters of thousands of nodes.
    view = mgr.store.view()
    stored = view.table(pb.Node)
    cluster = mgr.cluster()
    listing = listing_of(mgr.store)
    matching = [n for n in view.list(pb.Node) if node_matches(n, filters)]
    parts = await parts_in_turns(matching, lambda n: listing.node(n, cluster))
    listing.nodes.forget_gone(len(stored), stored.keys)
    return json_list(parts)


async def inspect_node(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    node = NodeControl(mgr.store).get(request.match_info["node_id"])
    return web.json_response(convert.node_json(node, convert.tls_info(mgr.cluster())))


async def update_node(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    version = int_param(request.query.get("version"), "version")
    if version is None:
        raise InvalidRequest("node update needs ?version=N (the node's Version.Index)")
    spec = convert.node_spec(parse_json(await request.read()))
    node = NodeControl(mgr.store).updated(request.match_info["node_id"], version, spec)
    await mgr.update(node)
    return web.Response(status=200)


async def remove_node(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    force = bool_param(request.query.get("force"))
    node = NodeControl(mgr.store).removable(request.match_info["node_id"], force)
    await mgr.write((store_pb2.DELETE, node))
    return web.Response(status=200)


ROUTES = [
    ("GET", "/nodes", list_nodes),
    ("GET", "/nodes/{node_id}", inspect_node),
    ("POST", "/nodes/{node_id}/update", update_node),
    ("DELETE", "/nodes/{node_id}", remove_node),
]
