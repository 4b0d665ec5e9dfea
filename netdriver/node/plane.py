"""The node's whole data plane (worker.network.NodeNetwork): the overlay (namespaces,
bridges, VXLAN, sandboxes' interfaces) with the resolver and the VIP balancer in each
sandbox, and at the node's edges WireGuard (while an encrypted network is here) and the
routing mesh (while a port is published).

Every part converges to the latest assignments message on each change and every 10 s;
each round's check becomes the node's network report (`shoal network doctor`), sent in a
heartbeat only when it changed: every report is a write of the Node object, and a user's
`node update` of the same version would be refused as out of sequence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from netdriver.attachments import container_of, is_attachment
from netdriver.ipam import is_encrypted
from netdriver.node.dataplane import Dataplane
from netdriver.node.mesh import Mesh
from netdriver.node.nft import SandboxBalancer
from netdriver.node.resolver import Resolver
from netdriver.node.wireguard import DEFAULT_LISTEN_PORT, WireGuard
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

EDGE_INTERVAL = 10.0
INGRESS_KEY = "ingress-endpoint"
# A container's ID → (full ID, network namespace path), None when not running.
ContainerLookup = Callable[[str], Awaitable[tuple[str, str] | None]]


class NodePlane:
    def __init__(self, node_id: str, underlay_ip: str, netns_prefix: str,
                 state_dir: str | Path, *, upstreams: list[str] | None = None,
                 wg_port: int = DEFAULT_LISTEN_PORT, rotate_interval: float | None = None,
                 host_netns: str | None = None,
                 container_netns: ContainerLookup | None = None) -> None:
        self.node_id = node_id
        self.container_netns = container_netns
        self._containers: dict[str, str] = {}  # attachment task id → container netns
        self.overlay = Dataplane(node_id, underlay_ip, netns_prefix, host_netns)
        self.resolver = Resolver(upstreams)
        self.balancer = SandboxBalancer()
        self.overlay.extras = [self.resolver, self.balancer]
        self.wireguard = WireGuard(node_id, state_dir, host_netns, wg_port, rotate_interval)
        self.mesh = Mesh(f"{netns_prefix}ingress", host_netns)
        self.rotate_interval = rotate_interval
        self._message = cluster_pb2.AssignmentsMessage()
        self._wake = asyncio.Event()
        self._tunnel_on = False
        # Called when the public key or the tunnel error changes (the node sends a heartbeat
        # at once: until peers learn a rotated key, traffic with them is dropped).
        self.on_tunnel_change: Callable[[], None] = lambda: None
        self._mesh_on = False
        self._mesh_attached = ""  # the ingress address the mesh namespace is attached with
        self._report = pb.NetworkReport()
        self._sent: tuple[bytes, int] = (b"", 0)  # (report without time, when sent)

    # -- NodeNetwork --

    def update(self, message: cluster_pb2.AssignmentsMessage) -> None:
        self._message = message
        self.overlay.update(message)
        self._wake.set()

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None:
        await self.overlay.attach(key, netns_path, attachments)

    async def detach(self, key: str) -> None:
        await self.overlay.detach(key)

    # -- running --

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.overlay.run(), name="overlay")
                tg.create_task(self._edges(), name="network edges")
        finally:
            await self.resolver.close()

    async def _edges(self) -> None:
        while True:
            interval = min(EDGE_INTERVAL, self.rotate_interval or EDGE_INTERVAL)
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            message = self._message
            for step in (self._sync_tunnel, self._sync_mesh, self._sync_containers):
                try:
                    await step(message)
                except Exception:  # logged; the next round tries again
                    log.exception("network %s failed", step.__name__)
            try:
                self._report = await self._check(message)
            except Exception:
                log.exception("network check failed")

    def _self_peer(self, message: cluster_pb2.AssignmentsMessage) -> cluster_pb2.NetworkPeer:
        return next((p for p in message.peers if p.node_id == self.node_id),
                    cluster_pb2.NetworkPeer())

    async def _sync_tunnel(self, message: cluster_pb2.AssignmentsMessage) -> None:
        wanted = any(is_encrypted(n.network) for n in message.networks)
        if not wanted:
            if self._tunnel_on:
                await self.wireguard.close()
                self._tunnel_on = False
            return
        addr = self._self_peer(message).tunnel_addr
        if not addr:
            return  # the manager has not given this node a tunnel address yet
        was_up = self._tunnel_on and not self.wireguard.error
        said = (self.wireguard.public_key, self.wireguard.error if self._tunnel_on else "")
        await self.wireguard.sync(message, addr)
        self._tunnel_on = True
        if (self.wireguard.public_key, self.wireguard.error) != said:
            self.on_tunnel_change()
        if not was_up and not self.wireguard.error:
            self.overlay.update(message)  # encrypted VXLAN waits for the tunnel address

    async def _sync_mesh(self, message: cluster_pb2.AssignmentsMessage) -> None:
        ingress = next((n for n in message.networks if n.network.spec.ingress), None)
        addr = self._self_peer(message).ingress_addr
        if ingress is None or not addr:
            if self._mesh_on:
                await self.overlay.detach(INGRESS_KEY)
                await self.mesh.close()
                self._mesh_on, self._mesh_attached = False, ""
            return
        fresh = await self.mesh.prepare()
        if fresh or self._mesh_attached != addr:
            await self.overlay.attach(INGRESS_KEY, self.mesh.ingress_path, [
                pb.NetworkAttachment(network_id=ingress.network.id, addresses=[addr])])
            self._mesh_attached = addr
        local = [t for t in message.tasks
                 if t.status.state == pb.RUNNING and t.desired_state <= pb.RUNNING]
        await self.mesh.sync(message, local)
        self._mesh_on = True

    async def _sync_containers(self, message: cluster_pb2.AssignmentsMessage) -> None:
        """Containers attached with `network connect`: plumb each one's own namespace (the
        container runs already; nothing is started) and unplumb those disconnected."""
        wanted = {t.id: t for t in message.tasks if is_attachment(t) and t.networks
                  and t.desired_state <= pb.RUNNING}
        for task_id in [k for k in self._containers if k not in wanted]:
            await self.overlay.detach(task_id)
            del self._containers[task_id]
        if self.container_netns is None:
            return
        for task_id, task in wanted.items():
            found = await self.container_netns(container_of(task))
            if found is None:  # stopped: its address stays until it is disconnected
                if self._containers.pop(task_id, None) is not None:
                    await self.overlay.detach(task_id)
                continue
            if self._containers.get(task_id) != found[1]:
                await self.overlay.attach(task_id, found[1], list(task.networks))
                self._containers[task_id] = found[1]

    async def _check(self, message: cluster_pb2.AssignmentsMessage) -> pb.NetworkReport:
        report = self.overlay.network_report()
        extra = [*await self.resolver.repair(), *await self.balancer.repair()]
        if self._mesh_on:
            extra += [f"routing mesh: {d}" for d in await self.mesh.differences()]
        if self._tunnel_on:
            addr = self._self_peer(message).tunnel_addr
            extra += [f"wireguard: {d}" for d in await self.wireguard.check(message, addr)]
            report.peers.extend(await self.wireguard.peer_checks(message))
            report.tunnel_error = self.wireguard.error
        if extra:  # node-wide findings go with every network's check
            for check in report.networks:
                check.differences.extend(extra)
        return report

    # -- what the node reports (heartbeats, metrics) --

    @property
    def assignments(self) -> cluster_pb2.AssignmentsMessage:
        """The latest assignments the plane converges to (read-only)."""
        return self._message

    @property
    def report(self) -> pb.NetworkReport:
        """The latest round's check (read-only): WireGuard peers and their handshakes."""
        return self._report

    def heartbeat(self, request: cluster_pb2.HeartbeatRequest) -> None:
        request.public_key = self.wireguard.public_key
        request.key_created_ns = self.wireguard.key_created_ns
        request.tunnel_error = self.wireguard.error if self._tunnel_on else ""
        report = pb.NetworkReport()
        report.CopyFrom(self._report)
        checked = report.checked_ns
        report.checked_ns = 0
        body = report.SerializeToString(deterministic=True)
        now = time.time_ns()
        if checked and body != self._sent[0]:
            report.checked_ns = checked
            request.network_report.CopyFrom(report)
            self._sent = (body, now)
