"""Published ports of services (pure): ingress ports without a number get one from the
dynamic range, unique in the cluster per protocol; host-mode ports need nothing here (the
scheduler keeps two tasks from taking one host port on the same node). Which ports are held
and what conflicts is `manager.rules.ports`, shared with the API and the scheduler.

Routing the ingress ports (the routing mesh) is the network work's; this only records the
numbers in `Service.endpoint`, where it and the API read them.
"""

from __future__ import annotations

from manager.errors import FailedPrecondition
from manager.rules.ports import PortKey
from proto import objects_pb2 as pb

DYNAMIC_FIRST = 30000
DYNAMIC_LAST = 32767

_INGRESS = pb.PortConfig.INGRESS


def resolve_endpoint(service: pb.Service, used: set[PortKey]) -> pb.Endpoint:
    """The endpoint `service` should have: its spec plus a published port for each ingress
    port that has none, keeping the one allocated before when there is one. `used` holds
    the ports other services have; the ports chosen are added to it."""
    endpoint = pb.Endpoint()
    endpoint.spec.CopyFrom(service.spec.endpoint)
    previous = [p for p in service.endpoint.ports
                if p.publish_mode == _INGRESS and DYNAMIC_FIRST <= p.published_port <= DYNAMIC_LAST]
    for spec_port in service.spec.endpoint.ports:
        port = endpoint.ports.add()
        port.CopyFrom(spec_port)
        if port.publish_mode != _INGRESS:
            continue
        if port.published_port:
            used.add((port.protocol, port.published_port))
            continue
        reused = next((p for p in previous if p.protocol == port.protocol
                       and p.target_port == port.target_port
                       and (p.protocol, p.published_port) not in used), None)
        if reused is not None:
            previous.remove(reused)
            port.published_port = reused.published_port
        else:
            port.published_port = _first_free(port.protocol, used, service)
        used.add((port.protocol, port.published_port))
    return endpoint


def _first_free(protocol: int, used: set[PortKey], service: pb.Service) -> int:
    for number in range(DYNAMIC_FIRST, DYNAMIC_LAST + 1):
        if (protocol, number) not in used:
            return number
    raise FailedPrecondition(
        f"service {service.spec.annotations.name or service.id}: no free published port left "
        f"in {DYNAMIC_FIRST}-{DYNAMIC_LAST}; publish a port explicitly or remove a service")
