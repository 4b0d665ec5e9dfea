"""Starting and stopping the worker role, which every node runs, manager or not: the worker
(this node's tasks on the engine), the agent (its session with a manager) and, on an engine
that runs sandboxes, the data plane; with the node's certificate renewal they run as one
service group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pki
from netdriver.node.plane import NodePlane
from proto import cluster_pb2
from proto import objects_pb2 as pb
from shoal.description import describe
from shoal.nodestate import Certificates, SwarmState
from shoal.services import Service, ServiceGroup
from worker.agent import Agent, AgentConfig
from worker.executor.base import Executor
from worker.executor.docker.executor import DockerExecutor
from worker.worker import Worker


@dataclass
class NetworkOptions:
    """How this node's data plane is set up (shoald flags)."""
    netns_prefix: str = "shl-n"
    dns_upstreams: list[str] | None = None  # None: the host's resolv.conf
    wg_port: int = 51820
    key_rotation: float | None = None  # seconds between WireGuard key rotations


def make_plane(executor: Executor, state: SwarmState, data_path: str,
               opts: NetworkOptions) -> NodePlane | None:
    """The data plane, for an executor that runs sandboxes (the fake one runs none)."""
    if not isinstance(executor, DockerExecutor):
        return None
    plane = NodePlane(state.node_id, state.advertise_ip, opts.netns_prefix,
                      data_path, upstreams=opts.dns_upstreams, wg_port=opts.wg_port,
                      rotate_interval=opts.key_rotation,
                      container_netns=executor.container_netns)
    executor.network = plane
    return plane


class WorkerRole:
    def __init__(self, state: SwarmState, hostname: str, executor: Executor,
                 plane: NodePlane | None, certs: Callable[[], Certificates],
                 on_message: Callable[[cluster_pb2.SessionMessage], Awaitable[None]],
                 problems: Callable[[], str]) -> None:
        """`certs`: the node's certificates now (renewal replaces them); `on_message`: what
        the managers say in the session; `problems`: what heartbeats report."""
        self.hostname = hostname
        self.plane = plane
        self.worker = Worker(state.node_id, executor, network=plane)
        config = AgentConfig(
            addr=state.advertise_ip,
            credentials=lambda: pki.channel_credentials(
                certs().ca_pem, certs().key_pem, certs().cert_pem),
            channel_options=pki.channel_options(),
            description=self._describe,
            on_message=on_message,
            worker=self.worker,
            problems=problems,
            network=plane.heartbeat if plane is not None else lambda _: None,
        )
        self.agent = Agent(config, state.managers)
        if plane is not None:
            plane.on_tunnel_change = self.agent.beat_now
        self.services = ServiceGroup("node services")

    async def start(self, renew_loop: Service) -> None:
        services: dict[str, Service] = {"worker": self.worker.run, "agent": self._run_agent,
                                        "certificate renewal": renew_loop}
        if self.plane is not None:
            services["data plane"] = self.plane.run
        await self.services.start(services)

    async def stop(self) -> None:
        await self.services.stop()
        await self.worker.stop()  # containers keep running: a restart adopts them

    async def _run_agent(self) -> None:
        await self.worker.wait_engine(3.0)  # so the first session reports the engine version
        await self.agent.run()

    def _describe(self) -> pb.NodeDescription:
        engine = self.worker.engine
        if engine is None:
            return describe(self.hostname)
        return describe(self.hostname, engine.version, engine.labels)
