"""What `shoal dashboard`'s proxy forwards (pure decisions, tested directly).

Read-only by default: GET/HEAD of the dashboard's files and of what the page reads (nodes,
services, tasks, networks, events, metrics). The swarm object (its join tokens), secrets,
configs, logs and the engine's own routes are never forwarded. With actions allowed (the
operator's `--allow-actions`), two writes are forwarded too: a service's update (scale) and a
node's update (availability), each only from the page itself: a JSON body with the
dashboard's header and, when the browser names one, the proxy's own Origin, so another web
site cannot post to the local port (a cross-site request with that header needs a CORS
preflight, which the proxy never grants)."""

from __future__ import annotations

import re
from collections.abc import Mapping

_READ = re.compile(r"^/(?:v[0-9]+\.[0-9]+/)?(?:_ping|version|events|metrics"
                   r"|(?:nodes|services|tasks|networks)(?:/[A-Za-z0-9_.-]+)?)$")
_PAGE = re.compile(r"^/dashboard(?:/(?:[a-z][a-z0-9-]*\.[a-z]+)?)?$")
_ACTIONS = re.compile(r"^/(?:v[0-9]+\.[0-9]+/)?(?:nodes|services)/[A-Za-z0-9_.-]+/update$")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
ACTION_HEADER = "X-Shoal-Dashboard"
# Answered by the proxy itself: tells the page whether it may offer actions.
PROXY_INFO = "/dashboard/proxy.json"

Refusal = tuple[int, str]


def refusal(method: str, path: str, actions: bool = False) -> Refusal | None:
    """Why the proxy refuses a request (status, message), or None to forward it."""
    if method in ("GET", "HEAD"):
        if _READ.match(path) or _PAGE.match(path):
            return None
        return 403, (f"the dashboard proxy does not forward {path}: it serves only the "
                     "dashboard and what it reads (nodes, services, tasks, networks, events)")
    if actions and method == "POST" and _ACTIONS.match(path):
        return None
    how = ("its actions are service and node updates only" if actions else
           "start it with --allow-actions to scale services and drain nodes from the page")
    return 405, (f"the dashboard proxy does not forward {method} {path}: {how}; use the shoal "
                 "or docker CLI on the node's socket to change the cluster")


def forged(headers: Mapping[str, str], own_origin: str) -> Refusal | None:
    """Why a forwarded write does not come from the dashboard page, or None if it does."""
    if headers.get(ACTION_HEADER) != "1":
        return 403, f"an action through the dashboard proxy needs the {ACTION_HEADER} header"
    if not headers.get("Content-Type", "").startswith("application/json"):
        return 403, "an action through the dashboard proxy must send JSON"
    origin = headers.get("Origin")
    if origin is not None and origin != own_origin:
        return 403, f"the dashboard proxy takes actions only from {own_origin}, not {origin}"
    return None


def host_allowed(host_header: str | None, address: str, port: int) -> bool:
    """Whether the request's Host names this proxy (its address, or localhost on loopback):
    a page of another site that rebinds its name to 127.0.0.1 still sends its own name."""
    if not host_header:
        return False
    if host_header.startswith("["):  # [::1]:8001
        name, _, rest = host_header[1:].partition("]")
        given = rest.removeprefix(":")
    else:
        name, _, given = host_header.rpartition(":")
    names = {address, *LOOPBACK} if address in LOOPBACK else {address}
    return name in names and given == str(port)
