"""Renewing the node certificate: a node asks a manager to sign a CSR for a new key some time
between half and four fifths of its certificate's lifetime, and again every RENEW_RETRY
seconds while that fails. Why it fails is reported in heartbeats, so `docker node inspect`
shows it before the certificate expires."""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from collections.abc import Awaitable, Callable

import grpc

import pki
from manager.ca.authority import BACKDATE
from manager.errors import Unavailable
from proto import cluster_pb2, cluster_pb2_grpc
from shoal.errors import rpc_message
from shoal.nodestate import Certificates

log = logging.getLogger(__name__)

RENEW_RETRY = 5.0  # seconds between attempts to renew the certificate after a failure


def renew_at(ident: pki.Identity, fraction: float) -> datetime.datetime:
    """When `fraction` of the certificate's lifetime has passed."""
    # Certificates are back-dated against clock skew; count from when it was issued.
    issued = ident.not_before + BACKDATE
    lifetime = (ident.not_after - issued).total_seconds()
    return issued + datetime.timedelta(seconds=lifetime * fraction)


def renewal_problem(since: datetime.datetime, not_after: datetime.datetime, error: str) -> str:
    """What `node inspect` shows while renewal fails: since when, why, and the deadline."""
    return (f"certificate renewal failing since {since:%Y-%m-%dT%H:%M:%SZ} ({error}); the "
            f"node certificate expires at {not_after:%Y-%m-%dT%H:%M:%SZ}")


async def new_certificate(channel: grpc.aio.Channel, ca_pem: bytes) -> tuple[Certificates, int]:
    """A new key and the certificate the manager at the other end of `channel` signs for it,
    and the role that certificate gives (the one the store gives this node now)."""
    key = pki.new_key()
    resp = await cluster_pb2_grpc.NodeCAStub(channel).RenewCertificate(
        cluster_pb2.RenewCertificateRequest(csr_pem=pki.make_csr(key)), timeout=10.0)
    return Certificates(pki.key_pem(key), resp.cert_pem, ca_pem), resp.role


async def renew_loop(identity: Callable[[], pki.Identity], renew: Callable[[], Awaitable[None]],
                     report: Callable[[str], None]) -> None:
    """Renew the certificate `identity` describes with `renew`, for as long as the node runs;
    `report` is told why renewing fails, and "" once it works again."""
    failing_since: datetime.datetime | None = None
    while True:
        ident = identity()
        # A random point, not a fixed one: nodes that joined together don't all ask at once.
        delay = (renew_at(ident, random.uniform(0.5, 0.8))
                 - datetime.datetime.now(datetime.UTC)).total_seconds()
        await asyncio.sleep(max(delay, 1.0))
        try:
            await renew()
            report("")
            failing_since = None
        except (grpc.aio.AioRpcError, Unavailable) as err:
            failing_since = failing_since or datetime.datetime.now(datetime.UTC)
            problem = renewal_problem(failing_since, ident.not_after, rpc_message(err))
            report(problem)
            log.warning("%s; retrying in %g s", problem, RENEW_RETRY)
            await asyncio.sleep(RENEW_RETRY)
