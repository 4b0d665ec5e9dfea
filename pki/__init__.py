"""Cluster PKI primitives shared by managers and workers (a leaf: imports only ``proto``).

Node keys, CSRs, reading a node's identity out of its certificate, join tokens, gRPC TLS
credentials, and the trust-on-first-use fetch of the root CA that a joining node checks
against its join token. The signing side lives in ``manager/ca``. ``manager``, ``worker``
and ``shoal`` all import this package, so it must import none of them (import-linter
checks it).
"""

from pki.certs import (
    CA_COMMON_NAME,
    MANAGER_OU,
    TLS_SERVER_NAME,
    WORKER_OU,
    Identity,
    identity_of,
    key_pem,
    load_key,
    make_csr,
    new_key,
    role_ou,
)
from pki.errors import PKIError, TokenError
from pki.grpc_tls import (
    channel_credentials,
    channel_options,
    peer_identity,
    server_credentials,
    server_options,
)
from pki.tofu import fetch_root_ca_unverified
from pki.tokens import (
    DIGEST_LEN,
    SECRET_LEN,
    TOKEN_PREFIX,
    JoinToken,
    ca_digest,
    format_join_token,
    new_token_secret,
    parse_join_token,
)

__all__ = [
    "CA_COMMON_NAME",
    "DIGEST_LEN",
    "MANAGER_OU",
    "SECRET_LEN",
    "TLS_SERVER_NAME",
    "TOKEN_PREFIX",
    "WORKER_OU",
    "Identity",
    "JoinToken",
    "PKIError",
    "TokenError",
    "ca_digest",
    "channel_credentials",
    "channel_options",
    "fetch_root_ca_unverified",
    "format_join_token",
    "identity_of",
    "key_pem",
    "load_key",
    "make_csr",
    "new_key",
    "new_token_secret",
    "parse_join_token",
    "peer_identity",
    "role_ou",
    "server_credentials",
    "server_options",
]
