"""Where the resolver forwards names that are not ours: the node's upstreams (from its
resolv.conf) or a task's own (`--dns` of its service). Pure but for reading resolv.conf."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from proto import objects_pb2 as pb

PORT = 53
RESOLV_CONF = "/etc/resolv.conf"
# systemd-resolved's list of real upstreams, used when resolv.conf names only its stub.
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"

Upstream = tuple[str, int]


def parse_upstream(text: str) -> Upstream:
    """"10.0.0.2" / "10.0.0.2:5353" / "[fd00::1]:53" / "fd00::1" → (address, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, PORT
    ipaddress.ip_address(host)  # a name here would need a resolver to find the resolver
    return host, port


def nameservers(resolv_conf: str) -> list[str]:
    """The `nameserver` lines of a resolv.conf, without loopback ones: they name a stub on
    the host (127.0.0.53 and the like) that sandboxes and lab hosts don't share."""
    out: list[str] = []
    for line in resolv_conf.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(words[1].split("%", 1)[0])
            except ValueError:
                continue
            if not addr.is_loopback:
                out.append(words[1])
    return out


def task_upstreams(tasks: Sequence[pb.Task]) -> dict[str, list[Upstream]]:
    """The tasks that name their own nameservers, by task ID."""
    return {t.id: [parse_upstream(ns) for ns in t.spec.container.dns_config.nameservers]
            for t in tasks if t.spec.container.dns_config.nameservers}


def host_upstreams(paths: Sequence[str] = (RESOLV_CONF, SYSTEMD_RESOLV_CONF)) -> list[str]:
    """The node's upstreams: the first of `paths` that names a non-loopback server."""
    for path in paths:
        try:
            found = nameservers(Path(path).read_text())
        except OSError:
            continue
        if found:
            return found
    return []
