"""/info, /swarm, /swarm/init, /swarm/join, /swarm/leave, /swarm/update."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import platform
from typing import Any

from aiohttp import web

from manager import backup
from manager.controlapi.cluster import unlock_key, update_cluster
from manager.controlapi.limits import check_cluster_spec
from manager.errors import Unavailable
from netdriver import ipam
from proto import objects_pb2 as pb
from shoal import joining
from shoal.api import convert
from shoal.api.context import node_of
from shoal.api.request import bool_param, fields, int_param, parse_json
from shoal.description import VERSION, host_routes
from shoal.errors import InvalidRequest, NotAManager
from shoal.newcluster import InitRequest
from shoal.node import Node
from worker.executor.base import ExecutorError
from worker.executor.docker.executor import DockerExecutor

log = logging.getLogger(__name__)

DEFAULT_PORT = 2377


async def _body(request: web.Request) -> Any:
    return parse_json(await request.read())


def split_addr(value: str, default_port: int, what: str) -> tuple[str, int]:
    """'IP', 'IP:PORT' or ':PORT' → (ip, port), refusing anything else with a clear message."""
    host, port = value, default_port
    if value.count(":") == 1:
        host, _, port_text = value.partition(":")
        try:
            port = int(port_text)
        except ValueError as err:
            raise InvalidRequest(f"invalid {what} {value!r}: bad port") from err
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError as err:
            raise InvalidRequest(f"invalid {what} {value!r}: expected IP[:PORT]") from err
    if not 0 < port < 65534:
        raise InvalidRequest(f"invalid {what} {value!r}: port out of range")
    return host, port


def addresses(f: dict[str, Any]) -> tuple[str, str, int]:
    listen_ip, port = split_addr(f.get("ListenAddr") or "0.0.0.0:2377", DEFAULT_PORT,
                                 "listen address")
    listen_ip = listen_ip or "0.0.0.0"
    adv_ip, adv_port = split_addr(f.get("AdvertiseAddr") or "", port, "advertise address")
    if not adv_ip:
        if listen_ip == "0.0.0.0":
            raise InvalidRequest("an advertise address is required: pass --advertise-addr IP "
                                 "(the address other nodes reach this node at)")
        adv_ip = listen_ip
    return adv_ip, listen_ip, adv_port


def _availability(value: str | None) -> int:
    if not value:
        return pb.ACTIVE
    return convert._enum(value, convert.AVAILABILITY, "availability")


_INIT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "ListenAddr": str, "AdvertiseAddr": str, "DataPathAddr": str, "DataPathPort": int,
    "DefaultAddrPool": list, "SubnetSize": int, "ForceNewCluster": bool, "Spec": dict,
    "AutoLockManagers": bool, "Availability": str}


async def swarm_init(request: web.Request) -> web.Response:
    f = fields(await _body(request), _INIT_FIELDS, "SwarmInitRequest")
    node = node_of(request)
    if f.get("ForceNewCluster") and node.state is not None:
        return web.json_response(await node.force_new_cluster())
    adv_ip, listen_ip, port = addresses(f)
    spec = convert.cluster_spec(f.get("Spec") or {})
    check_cluster_spec(spec)
    req = InitRequest(adv_ip, listen_ip, port, spec, _availability(f.get("Availability")),
                      *_address_pools(f))
    node_id = await node.init(req)
    return web.json_response(node_id)


def _address_pools(f: dict[str, Any]) -> tuple[list[str], int, int]:
    """DefaultAddrPool, SubnetSize and DataPathPort, checked: the pools are CIDRs that no
    route of this host overlaps, the size fits in each pool, the port is a user port."""
    pools = []
    for text in f.get("DefaultAddrPool") or []:
        if not isinstance(text, str):
            raise InvalidRequest("DefaultAddrPool must be a list of CIDR strings")
        try:
            pool = ipam.parse_net(text, "default address pool")
        except ipam.IPAMError as err:
            raise InvalidRequest(str(err)) from None
        for route in host_routes():
            if pool.overlaps(ipam.Net(route.dst)):
                raise InvalidRequest(f"default address pool {pool} overlaps route {route.dst} "
                                     f"dev {route.dev} of this host; choose another pool")
        pools.append(str(pool))
    size = f.get("SubnetSize") or 0
    if size and not (max([ipam.Net(p).prefixlen for p in pools] or [8]) <= size <= 29):
        raise InvalidRequest(f"invalid default address pool mask length {size}: it must be "
                             "between the pool's prefix length and 29")
    port = f.get("DataPathPort") or 0
    if port and not 1024 <= port <= 49151:
        raise InvalidRequest(f"invalid data path port {port}: use a port in 1024-49151 "
                             "(default 4789)")
    return pools, int(size), int(port)


_JOIN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "ListenAddr": str, "AdvertiseAddr": str, "DataPathAddr": str, "RemoteAddrs": list,
    "JoinToken": str, "Availability": str}


async def swarm_join(request: web.Request) -> web.Response:
    f = fields(await _body(request), _JOIN_FIELDS, "SwarmJoinRequest")
    remotes = f.get("RemoteAddrs") or []
    if not remotes or not f.get("JoinToken"):
        raise InvalidRequest("a join needs RemoteAddrs (a manager's IP:PORT) and a JoinToken")
    remote_ip, remote_port = split_addr(str(remotes[0]), DEFAULT_PORT, "remote address")
    adv_ip, listen_ip, port = addresses(f)
    await node_of(request).join(joining.JoinRequest(
        f"{remote_ip}:{remote_port}", f["JoinToken"], adv_ip, listen_ip, port,
        _availability(f.get("Availability"))))
    return web.Response(status=200)


async def swarm_leave(request: web.Request) -> web.Response:
    await node_of(request).leave(bool_param(request.query.get("force")))
    return web.Response(status=200)


async def swarm_inspect(request: web.Request) -> web.Response:
    mgr = node_of(request).manager()
    return web.json_response(convert.cluster_json(mgr.cluster(), with_tokens=True))


async def swarm_update(request: web.Request) -> web.Response:
    mgr = node_of(request).manager()
    version = int_param(request.query.get("version"), "version")
    if version is None:
        raise InvalidRequest("swarm update needs ?version=N (the swarm's Version.Index)")
    spec = convert.cluster_spec(await _body(request), base=mgr.cluster().spec)
    await update_cluster(mgr, version, spec, bool_param(request.query.get("rotateWorkerToken")),
                         bool_param(request.query.get("rotateManagerToken")),
                         bool_param(request.query.get("rotateManagerUnlockKey")))
    return web.Response(status=200)


async def swarm_unlock_key(request: web.Request) -> web.Response:
    return web.json_response({"UnlockKey": unlock_key(node_of(request).manager().cluster())})


async def swarm_unlock(request: web.Request) -> web.Response:
    f = fields(await _body(request), {"UnlockKey": str}, "UnlockRequest")
    await node_of(request).unlock(f.get("UnlockKey", ""))
    return web.Response(status=200)


async def swarm_backup(request: web.Request) -> web.Response:
    """Shoal's own endpoint (Docker has none): a backup of the store, as one file
    (manager/backup.py), from one store version; 503 on a worker, as every cluster read."""
    mgr = node_of(request).manager()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = backup.make(mgr.store.snapshot(), mgr.node_id, now)
    return web.Response(body=data, content_type="application/octet-stream", headers={
        "Content-Disposition": 'attachment; filename="shoal-backup.bin"'})


def _swarm_info(node: Node) -> dict[str, Any]:
    info: dict[str, Any] = {"NodeID": "", "NodeAddr": "", "LocalNodeState": node.local_state,
                            "ControlAvailable": False, "Error": "", "RemoteManagers": None,
                            "Nodes": 0, "Managers": 0, "Cluster": None}
    if node.state is None:
        return info
    if node.locked:  # nothing but its ID until unlocked
        info.update(NodeID=node.state.node_id, NodeAddr=node.state.advertise_ip)
        return info
    info.update(NodeID=node.state.node_id, NodeAddr=node.state.advertise_ip,
                RemoteManagers=[{"NodeID": "", "Addr": a} for a in node.state.managers])
    try:
        mgr = node.manager()
    except NotAManager:  # a worker: no control, no cluster view, which is what info says
        return info
    except Unavailable as err:  # a manager without quorum (or catching up): say so, as Docker
        info.update(ControlAvailable=True, Error=str(err))
        return info
    all_nodes = mgr.store.list(pb.Node)
    managers = [n for n in all_nodes if n.manager_status.addr]
    info.update(ControlAvailable=True, Nodes=len(all_nodes), Managers=len(managers),
                RemoteManagers=[{"NodeID": n.id, "Addr": n.manager_status.addr}
                                for n in managers])
    try:
        info["Cluster"] = convert.cluster_json(mgr.cluster(), with_tokens=False)
    except Unavailable as err:  # a new manager before the cluster object reached it
        log.info("info: no cluster object to show yet: %s", err)
        info["Error"] = str(err)
    return info


async def system_info(request: web.Request) -> web.Response:
    """dockerd's /info: the node's container engine's fields (what `docker info` counts:
    containers, images, memory, storage driver...) with this node's ID, name and Swarm."""
    node = node_of(request)
    info = await _engine_info(node)
    info.update(ID=node.state.node_id if node.state else "", Name=node.hostname,
                Swarm=_swarm_info(node))
    return web.json_response(info)


async def _engine_info(node: Node) -> dict[str, Any]:
    fallback: dict[str, Any] = {
        "ServerVersion": VERSION, "OperatingSystem": "Shoal", "OSType": "linux",
        "Architecture": platform.machine(), "NCPU": os.cpu_count() or 1,
        "KernelVersion": platform.release(), "Warnings": []}
    if not isinstance(node.executor, DockerExecutor):
        return fallback
    try:
        return fallback | await node.executor.engine_info()
    except ExecutorError as err:  # the node still answers; `docker info` shows why
        log.warning("info: the container engine did not answer: %s", err)
        fallback["Warnings"] = [f"WARNING: the node's container engine did not answer: {err}"]
        return fallback


ROUTES = [
    ("GET", "/info", system_info),
    ("GET", "/swarm", swarm_inspect),
    ("POST", "/swarm/init", swarm_init),
    ("POST", "/swarm/join", swarm_join),
    ("POST", "/swarm/leave", swarm_leave),
    ("POST", "/swarm/update", swarm_update),
    ("GET", "/swarm/unlockkey", swarm_unlock_key),
    ("POST", "/swarm/unlock", swarm_unlock),
    ("GET", "/swarm/backup", swarm_backup),
]
