"""/networks, /networks/create, GET and DELETE /networks/{id}: swarm-scoped overlay networks
in Docker's JSON shapes (`docker network create -d overlay`, docker-py's
`networks.create(driver="overlay")`)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from typing import Any

from aiohttp import web

from manager.controlapi.doctor import diagnose
from manager.controlapi.networks import NetworkControl, visible
from manager.errors import NotFound
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api.context import manager_of, node_of
from shoal.api.convert import timestamp
from shoal.api.request import fields, filters_param, parse_json
from shoal.api.services import label_match
from shoal.errors import InvalidRequest

ALLOCATE_WAIT = 5.0  # seconds create waits for the subnet and VNI
_FILTERS = {"id", "name", "label", "driver", "scope", "type"}


def network_spec(body: Any) -> pb.NetworkSpec:
    w = "NetworkCreateRequest"
    f = fields(body, {"Name": str, "CheckDuplicate": bool, "Driver": str, "Scope": str,
                      "Internal": bool, "Attachable": bool, "Ingress": bool, "IPAM": dict,
                      "EnableIPv6": bool, "Options": dict, "Labels": dict, "ConfigOnly": bool,
                      "ConfigFrom": dict}, w)
    if not f.get("Name"):
        raise InvalidRequest("the network has no name: give one (docker network create NAME)")
    if f.get("Scope", "swarm") not in ("swarm", ""):
        raise InvalidRequest(f"scope {f['Scope']!r} is not supported: Shoal networks are "
                             "swarm-scoped")
    if f.get("EnableIPv6"):
        raise InvalidRequest("IPv6 overlay networks are not supported by Shoal yet")
    if f.get("ConfigOnly") or f.get("ConfigFrom"):
        raise InvalidRequest("config-only networks are not supported by Shoal")
    spec = pb.NetworkSpec(driver=f.get("Driver") or "overlay", internal=f.get("Internal", False),
                          attachable=f.get("Attachable", False),
                          ingress=f.get("Ingress", False))
    spec.annotations.name = f["Name"]
    spec.annotations.labels.update(_strings_map(f, "Labels", w))
    spec.driver_options.update(_strings_map(f, "Options", w))
    ipam = fields(f.get("IPAM"), {"Driver": str, "Config": list, "Options": dict}, f"{w}.IPAM")
    if ipam.get("Driver", "default") != "default":
        raise InvalidRequest(f"IPAM driver {ipam['Driver']!r} is not supported: use the "
                             "default one")
    for i, config in enumerate(ipam.get("Config", [])):
        c = fields(config, {"Subnet": str, "IPRange": str, "Gateway": str,
                            "AuxiliaryAddresses": dict}, f"{w}.IPAM.Config[{i}]")
        if c.get("AuxiliaryAddresses"):
            raise InvalidRequest("IPAM auxiliary addresses are not supported by Shoal")
        if not c.get("Subnet") and (c.get("Gateway") or c.get("IPRange")):
            raise InvalidRequest("a gateway or ip-range needs a subnet (--subnet)")
        spec.ipam.append(pb.IPAMConfig(subnet=c.get("Subnet", ""),
                                       gateway=c.get("Gateway", ""),
                                       ip_range=c.get("IPRange", "")))
    return spec


def _strings_map(f: dict[str, Any], name: str, where: str) -> dict[str, str]:
    value = f.get(name, {})
    if not all(isinstance(v, str) for v in value.values()):
        raise InvalidRequest(f"{where}.{name} must map strings to strings")
    return dict(value)


def network_json(network: pb.Network) -> dict[str, Any]:
    spec = network.spec
    configs = network.ipam or spec.ipam
    return {
        "Name": spec.annotations.name, "Id": network.id,
        "Created": timestamp(network.meta.created_at_ns), "Scope": "swarm",
        "Driver": spec.driver or "overlay", "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None,
                 "Config": [_ipam_json(c) for c in configs]},
        "Internal": spec.internal, "Attachable": spec.attachable, "Ingress": spec.ingress,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
        "Options": dict(spec.driver_options) | (
            {"com.docker.network.driver.overlay.vxlanid_list": str(network.vni)}
            if network.vni else {}),
        "Labels": dict(spec.annotations.labels),
    }


def _ipam_json(config: pb.IPAMConfig) -> dict[str, str]:
    out = {"Subnet": config.subnet}
    if config.gateway:
        out["Gateway"] = config.gateway
    if config.ip_range:
        out["IPRange"] = config.ip_range
    return out


def matches(network: pb.Network, filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if key == "label":
            if not label_match(dict(network.spec.annotations.labels), values):
                return False
            continue
        checks = {"id": lambda v: network.id.startswith(v),
                  "name": lambda v: v in network.spec.annotations.name,
                  "driver": lambda v: v == (network.spec.driver or "overlay"),
                  "scope": lambda v: v == "swarm",
                  "type": lambda v: v == "custom"}
        if not any(checks[key](v) for v in values):
            return False
    return True


async def list_networks(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    filters = filters_param(request.query.get("filters"))
    unknown = set(filters) - _FILTERS
    if unknown:
        raise InvalidRequest(f"invalid filter '{sorted(unknown)[0]}': networks filter by "
                             f"{', '.join(sorted(_FILTERS))}")
    networks = [n for n in visible(mgr.store.list(pb.Network)) if matches(n, filters)]
    networks.sort(key=lambda n: n.spec.annotations.name)
    return web.json_response([network_json(n) for n in networks])


async def inspect_network(request: web.Request) -> web.Response:
    network = NetworkControl(manager_of(request).store).get(request.match_info["ref"])
    return web.json_response(network_json(network))


# One create at a time through one node, so two requests can't both pass the checks (the
# store's unique names catch two managers racing).
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
    weakref.WeakKeyDictionary()


async def create_network(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    spec = network_spec(parse_json(await request.read()))
    async with _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
        network = NetworkControl(mgr.store).create(spec)
        await mgr.write((store_pb2.CREATE, network))
    # As Docker, answer once the network has its subnet (the leader's allocator gives it).
    deadline = time.monotonic() + ALLOCATE_WAIT
    while time.monotonic() < deadline:
        stored = mgr.store.get(pb.Network, network.id)
        if stored is None or stored.vni:
            break
        await asyncio.sleep(0.05)
    return web.json_response({"Id": network.id, "Warning": ""}, status=201)


async def doctor(request: web.Request) -> web.Response:
    """Shoal's own: each node's data plane on the network against the store."""
    mgr = manager_of(request)
    network = NetworkControl(mgr.store).get(request.match_info["ref"])
    nodes = diagnose(mgr.view(), network, time.time_ns(), request.query.get("node") or None)
    return web.json_response({"Network": network_json(network),
                              "Nodes": [dataclasses.asdict(n) for n in nodes]})


async def connect(request: web.Request) -> web.Response:
    """Docker's `network connect`: a running container of this node's engine joins an
    attachable network."""
    node, mgr = node_of(request), manager_of(request)
    f = fields(parse_json(await request.read()), {"Container": str, "EndpointConfig": dict},
               "NetworkConnectRequest")
    config = fields(f.get("EndpointConfig"), {"Aliases": list, "IPAMConfig": dict,
                                               "Links": list, "NetworkID": str,
                                               "EndpointID": str, "Gateway": str,
                                               "IPAddress": str, "MacAddress": str,
                                               "DriverOpts": dict},
                    "NetworkConnectRequest.EndpointConfig")
    if config.get("IPAMConfig"):
        raise InvalidRequest("a fixed address (--ip) is not supported by Shoal: the network "
                             "gives the container one")
    found = await node.local_container(f.get("Container", ""))
    task = NetworkControl(mgr.store).connect(request.match_info["ref"], found[0],
                                             node.node_id(), config.get("Aliases") or [])
    await mgr.write((store_pb2.CREATE, task))
    return web.Response(status=200)


async def disconnect(request: web.Request) -> web.Response:
    node, mgr = node_of(request), manager_of(request)
    f = fields(parse_json(await request.read()), {"Container": str, "Force": bool},
               "NetworkDisconnectRequest")
    ref = f.get("Container", "")
    try:
        container = (await node.local_container(ref))[0]
    except NotFound:  # stopped or gone: its ID as given
        container = ref
    task = NetworkControl(mgr.store).disconnect(request.match_info["ref"], container)
    await mgr.write((store_pb2.DELETE, task))
    return web.Response(status=200)


async def remove_network(request: web.Request) -> web.Response:
    mgr = manager_of(request)
    network = NetworkControl(mgr.store).remove(request.match_info["ref"])
    await mgr.write((store_pb2.UPDATE if network.pending_delete else store_pb2.DELETE, network))
    return web.Response(status=204)


ROUTES = [
    ("GET", "/networks", list_networks),
    ("POST", "/networks/create", create_network),
    ("GET", "/networks/{ref}", inspect_network),
    ("GET", "/networks/{ref}/doctor", doctor),
    ("POST", "/networks/{ref}/connect", connect),
    ("POST", "/networks/{ref}/disconnect", disconnect),
    ("DELETE", "/networks/{ref}", remove_network),
]
