"""Which published ports a service or task holds, and when two of them conflict.

Ingress ports are cluster-wide: one (protocol, number) belongs to one service, whether its
spec names the number or the allocator chose it. Host-mode ports are per node: two tasks
on one node can't take the same one. The API refuses a spec whose ingress port another
service holds (`conflicts`), the allocator picks free numbers around the held ones
(`in_use_by_others`), and the scheduler keeps host ports apart (`host_ports`), all from
these definitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from proto import objects_pb2 as pb

PortKey = tuple[int, int]  # (protocol, published port)

_INGRESS = pb.PortConfig.INGRESS


class Conflict(NamedTuple):
    port: str           # "8080/tcp"
    holder: pb.Service  # the service that already has it


def port_key(port: pb.PortConfig) -> PortKey:
    return port.protocol, port.published_port


def port_label(port: pb.PortConfig) -> str:
    return f"{port.published_port}/{pb.PortConfig.Protocol.Name(port.protocol).lower()}"


def _published_ingress(ports: Iterable[pb.PortConfig]) -> list[pb.PortConfig]:
    return [p for p in ports if p.publish_mode == _INGRESS and p.published_port]


def ingress_ports(service: pb.Service) -> set[PortKey]:
    """Ingress ports a service holds: its allocated ones and the ones its spec names."""
    held = list(service.endpoint.ports) + list(service.spec.endpoint.ports)
    return {port_key(p) for p in _published_ingress(held)}


def host_ports(task: pb.Task) -> tuple[PortKey, ...]:
    """The host-mode published ports a task takes on its node."""
    return tuple(port_key(p) for p in task.endpoint.ports
                 if p.publish_mode == pb.PortConfig.HOST and p.published_port)


def _holders(services: Iterable[pb.Service], service_id: str) -> dict[PortKey, pb.Service]:
    held: dict[PortKey, pb.Service] = {}
    for other in services:
        if other.id != service_id:
            for key in ingress_ports(other):
                held.setdefault(key, other)
    return held


def in_use_by_others(services: Iterable[pb.Service], service_id: str) -> set[PortKey]:
    return set(_holders(services, service_id))


def conflicts(spec: pb.EndpointSpec, services: Iterable[pb.Service],
              service_id: str = "") -> list[Conflict]:
    """Published ingress ports of `spec` that a service other than `service_id` holds."""
    held = _holders(services, service_id)
    return [Conflict(port_label(p), held[port_key(p)])
            for p in _published_ingress(spec.ports) if port_key(p) in held]
