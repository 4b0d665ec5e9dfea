"""TLS of shoald's TCP API listeners, with dockerd's flags: --tls (server TLS only),
--tlsverify (clients must present a certificate signed by --tlscacert), --tlscert and
--tlskey (the listener's own certificate). A TCP listener without TLS is refused unless
the operator passes --insecure-tcp (then a warning is logged): whoever reaches the port
would be root on every node of the swarm."""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from pki import WORKER_OU


@dataclass(frozen=True)
class ListenerTLS:
    tls: bool = False
    verify: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure_tcp: bool = False

    @property
    def enabled(self) -> bool:
        return self.tls or self.verify


class TLSConfigError(Exception):
    """The TLS flags can't serve the listeners asked for; the message says what to add."""


def tcp_hosts(hosts: list[str]) -> list[str]:
    return [h for h in hosts if urllib.parse.urlparse(h).scheme == "tcp"]


def check(hosts: list[str], opts: ListenerTLS) -> list[str]:
    """The warnings to log about these listeners; TLSConfigError if they must not start."""
    tcp = tcp_hosts(hosts)
    if opts.enabled:
        missing = [flag for flag, value in (("--tlscert", opts.cert), ("--tlskey", opts.key))
                   if not value]
        if opts.verify and not opts.cacert:
            missing.append("--tlscacert")
        if missing:
            raise TLSConfigError(f"TLS needs {' and '.join(missing)} (files in PEM format)")
        if not tcp:
            return ["TLS flags given but no tcp:// listener (-H tcp://ADDR:2376): they have "
                    "no effect on unix sockets"]
        if not opts.verify:
            return [f"API listener {h} uses TLS without --tlsverify: any client that reaches "
                    "it can control the swarm; add --tlsverify --tlscacert CA" for h in tcp]
        return []
    if not tcp:
        return []
    if not opts.insecure_tcp:
        raise TLSConfigError(
            f"refusing to listen on {', '.join(tcp)} without TLS: anyone who reaches it could "
            "control the swarm. Add --tlsverify --tlscacert CA --tlscert CERT --tlskey KEY "
            "(client certificates: `shoal ca issue-client`, a server certificate: `shoal ca "
            "issue-server`), or --insecure-tcp if you really want plain HTTP")
    return [f"API listener {h} is plain HTTP without TLS or authentication (--insecure-tcp): "
            "anyone who reaches it can control the swarm and run anything on its nodes"
            for h in tcp]


def server_context(opts: ListenerTLS) -> ssl.SSLContext:
    """The SSL context of the TCP listeners; TLSConfigError naming a file that fails."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert opts.cert and opts.key
    try:
        ctx.load_cert_chain(opts.cert, opts.key)
    except (OSError, ssl.SSLError) as err:
        raise TLSConfigError(f"cannot load --tlscert {opts.cert} / --tlskey {opts.key}: "
                             f"{err}") from err
    if opts.verify:
        assert opts.cacert
        try:
            ctx.load_verify_locations(cafile=opts.cacert)
        except (OSError, ssl.SSLError) as err:
            raise TLSConfigError(f"cannot load --tlscacert {opts.cacert}: {err}") from err
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _ou(peercert: dict[str, object]) -> list[str]:
    subject = peercert.get("subject", ())
    assert isinstance(subject, tuple)
    return [value for rdn in subject for key, value in rdn if key == "organizationalUnitName"]


def peer_refusal(peercert: dict[str, object] | None) -> str | None:
    """Why a verified client certificate may not use the API: a worker's node certificate
    (signed by the same root CA when --tlscacert is the swarm's) must not make a worker
    the swarm's administrator."""
    if peercert and WORKER_OU in _ou(peercert):
        return ("a worker node's certificate is not accepted on the API; use an operator "
                "certificate (`shoal ca issue-client`)")
    return None


@web.middleware
async def peer_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    refused = peer_refusal(peercert)
    if refused is not None:
        raise web.HTTPForbidden(reason=refused)
    return await handler(request)
