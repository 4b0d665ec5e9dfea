"""gRPC TLS credentials for nodes, and the identity of a verified gRPC peer."""

from __future__ import annotations

import functools
from typing import Any

import grpc
import grpc.aio

from pki.certs import TLS_SERVER_NAME, Identity, identity_of
from pki.errors import PKIError

_PEER_CERT_KEY = "x509_pem_cert"


def server_credentials(
    key_pem: bytes, cert_chain_pem: bytes, ca_pem: bytes, require_client_auth: bool
) -> grpc.ServerCredentials:
    """TLS for a node's gRPC server; clients are checked against ``ca_pem``."""
    return grpc.ssl_server_credentials(
        [(key_pem, cert_chain_pem)],
        root_certificates=ca_pem,
        require_client_auth=require_client_auth,
    )


def channel_credentials(
    ca_pem: bytes, key_pem: bytes | None = None, cert_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    """TLS for dialing a manager; pass key and cert to authenticate as a node."""
    if (key_pem is None) != (cert_pem is None):
        raise PKIError("channel credentials need both a key and a certificate, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def channel_options() -> list[tuple[str, Any]]:
    """Channel options to use with ``channel_credentials`` (dial by IP, verify the name).

    Message size: a node's assignment message carries all its tasks, each up to the
    control API's spec limit (128 KiB, manager/controlapi/limits.py) plus ~1 KiB. gRPC's
    default 4 MiB receive limit ended a session at ~30 max-size tasks (the node was then
    marked Down); 256 MiB carries ~1,900 such tasks per node, and hundreds of thousands of
    ordinary (few KiB) ones. The managers' servers send without a limit (gRPC's default)."""
    return [("grpc.ssl_target_name_override", TLS_SERVER_NAME),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 256 * 1024 * 1024), *KEEPALIVE]


# HTTP/2 pings, answered by gRPC's own threads on the manager, not by its event loop: a
# manager that is paused, cut off or gone fails them within KEEPALIVE_S x 2 and the
# connection closes, while one that is only busy still answers them. So a node leaves a
# dead leader by its connection, and stays with a busy one whose heartbeat answers are late
# (worker/agent.py): reopening sessions with a busy leader is what overloaded it further.
KEEPALIVE_S = 5
KEEPALIVE = [("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
             ("grpc.keepalive_timeout_ms", KEEPALIVE_S * 1000),
             ("grpc.keepalive_permit_without_calls", 1),
             ("grpc.http2.max_pings_without_data", 0)]


def server_options() -> list[tuple[str, Any]]:
    """A manager's gRPC servers: accept the nodes' pings (gRPC's default answers pings more
    often than every 5 minutes with GOAWAY, closing the connection)."""
    return [("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_S * 1000 - 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_ping_strikes", 0)]


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    """Identity of the client's verified certificate; None if it presented none.

    Raises PKIError if the certificate lacks node fields (gRPC already verified it
    chains to our CA, so that means a misissued certificate).
    """
    certs = list(context.auth_context().get(_PEER_CERT_KEY, ()))
    if not certs:
        return None
    return _identity(certs[0])


@functools.lru_cache(maxsize=65536)
def _identity(cert_pem: bytes) -> Identity:
    # Every heartbeat and status report presents the same certificate: parse it once. Room
    # for every node of a large swarm (4,096 entries made a 5,000-node leader parse
    # certificates again: 3 % of it), a few KiB each.
    return identity_of(cert_pem)
