"""POST /ca/certificates: the swarm's root CA signs a CSR for the TCP API (Shoal's own
route; Docker has none). Body {"CSR": PEM, "Kind": "client"|"server", "Name": str,
"Hosts": [IP or DNS name, ...] (server only), "ExpirySeconds": int}; answers
{"Certificate": PEM, "CACertificate": PEM}. The private key never comes here."""

from __future__ import annotations

import logging
from datetime import timedelta

from aiohttp import web

from manager.ca import operators
from manager.ca.errors import CAError
from manager.ca.server import signer
from shoal.api.context import manager_of
from shoal.api.request import fields, parse_json
from shoal.errors import InvalidRequest

log = logging.getLogger(__name__)

DEFAULT_EXPIRY = timedelta(days=90)
MIN_EXPIRY = timedelta(minutes=1)
MAX_EXPIRY = timedelta(days=10 * 365)
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "CSR": str, "Kind": str, "Name": str, "Hosts": list, "ExpirySeconds": int}


def _expiry(seconds: int | None) -> timedelta:
    if seconds is None:
        return DEFAULT_EXPIRY
    expiry = timedelta(seconds=seconds)
    if not MIN_EXPIRY <= expiry <= MAX_EXPIRY:
        raise InvalidRequest(f"ExpirySeconds {seconds} is out of range: from "
                             f"{int(MIN_EXPIRY.total_seconds())} to "
                             f"{int(MAX_EXPIRY.total_seconds())}")
    return expiry


async def issue_certificate(request: web.Request) -> web.Response:
    f = fields(parse_json(await request.read()), _FIELDS, "CertificateRequest")
    hosts = f.get("Hosts", [])
    if not all(isinstance(h, str) for h in hosts):
        raise InvalidRequest('CertificateRequest: field "Hosts" must be a list of strings')
    if "CSR" not in f:
        raise InvalidRequest('CertificateRequest: field "CSR" (a PEM certificate signing '
                             "request) is required")
    kind = f.get("Kind", operators.CLIENT)
    name = f.get("Name", "operator")
    mgr = manager_of(request)
    cluster = mgr.cluster()
    try:
        cert = operators.issue(signer(cluster), f["CSR"].encode(), kind, name, hosts,
                               cluster.id, _expiry(f.get("ExpirySeconds")))
    except CAError as err:
        raise InvalidRequest(str(err)) from err
    log.info("issued a %s certificate for the API to %r%s", kind, name,
             f" (hosts {', '.join(hosts)})" if hosts else "")
    return web.json_response({"Certificate": cert.decode(),
                              "CACertificate": cluster.root_ca.ca_cert_pem.decode()})


ROUTES = [("POST", "/ca/certificates", issue_certificate)]
