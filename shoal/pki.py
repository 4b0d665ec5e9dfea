"""Cluster PKI primitives shared by managers and workers.

Node keys, CSRs, reading a node's identity out of its certificate, join tokens, gRPC TLS
credentials, and the trust-on-first-use fetch of the root CA that a joining node checks
against its join token. The signing side lives in ``manager/ca``; this module must stay
importable by both roles, so it imports neither ``manager`` nor ``worker``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proto import objects_pb2

# Every node certificate carries this DNS SAN, and every client overrides the TLS target
# name to it, so nodes can dial each other by bare IP address.
TLS_SERVER_NAME = "swarm-manager"
CA_COMMON_NAME = "swarm-ca"
MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"

TOKEN_PREFIX = "SWMTKN-1-"
DIGEST_LEN = 50  # sha256 (256 bits) in base36 needs 50 digits
SECRET_LEN = 25  # 128 bits in base36 needs 25 digits
_SECRET_BYTES = 16
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN_RE = re.compile(
    rf"^{re.escape(TOKEN_PREFIX)}(?P<digest>[0-9a-z]{{{DIGEST_LEN}}})"
    rf"-(?P<secret>[0-9a-z]{{{SECRET_LEN}}})$"
)
_PEER_CERT_KEY = "x509_pem_cert"


class PKIError(Exception):
    """A key, certificate or TLS peer is unusable."""


class TokenError(PKIError):
    """A join token is not of the SWMTKN-1 form."""


# --- keys and CSRs -------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"cannot load private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"private key is {type(key).__name__}, expected an EC key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    # The CA overwrites the subject with the node ID, role and cluster it decides on, so
    # the CSR only proves possession of the key.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal-node")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


# --- node identity ---------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    node_id: str
    role: int  # objects_pb2.NodeRole value
    cluster_id: str
    not_before: datetime  # timezone-aware UTC
    not_after: datetime  # timezone-aware UTC


def role_ou(role: int) -> str:
    """The certificate OU naming a NodeRole."""
    if role == objects_pb2.MANAGER:
        return MANAGER_OU
    if role == objects_pb2.WORKER:
        return WORKER_OU
    raise PKIError(f"unknown node role {role}")


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PKIError(f"cannot load certificate: {exc}") from exc


def _single_attr(name: x509.Name, oid: x509.ObjectIdentifier, label: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not values[0].value:
        raise PKIError(f"certificate subject {name.rfc4514_string()!r} lacks a single {label}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def identity_of(cert_pem: bytes) -> Identity:
    """Node ID (CN), role (OU) and cluster ID (O) of a node certificate."""
    cert = _load_cert(cert_pem)
    subject = cert.subject
    node_id = _single_attr(subject, NameOID.COMMON_NAME, "common name (node ID)")
    ou = _single_attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (node role)")
    cluster_id = _single_attr(subject, NameOID.ORGANIZATION_NAME, "organization (cluster ID)")
    roles = {MANAGER_OU: objects_pb2.MANAGER, WORKER_OU: objects_pb2.WORKER}
    if ou not in roles:
        raise PKIError(f"certificate of node {node_id} has role OU {ou!r}, not a swarm role")
    return Identity(
        node_id=node_id,
        role=roles[ou],
        cluster_id=cluster_id,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


# --- digests and join tokens ------------------------------------------------------------


def _base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_B36[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def ca_digest(ca_cert_pem: bytes) -> str:
    """sha256 of the CA certificate's DER, in base36 padded to 50 digits."""
    der = _load_cert(ca_cert_pem).public_bytes(serialization.Encoding.DER)
    return _base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), DIGEST_LEN)


@dataclass(frozen=True)
class JoinToken:
    digest: str
    secret: str


def new_token_secret() -> str:
    return _base36(int.from_bytes(secrets.token_bytes(_SECRET_BYTES), "big"), SECRET_LEN)


def format_join_token(digest: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}{digest}-{secret}"


def _redact(text: str) -> str:
    # A malformed token may still be most of a real one; don't echo all of it into logs.
    return text if len(text) <= 16 else text[:16] + "..."


def parse_join_token(text: str) -> JoinToken:
    match = _TOKEN_RE.match(text.strip())
    if match is None:
        raise TokenError(
            f'invalid join token "{_redact(text.strip())}": malformed, expected '
            f"{TOKEN_PREFIX}<{DIGEST_LEN}-char CA digest>-<{SECRET_LEN}-char secret>"
        )
    return JoinToken(digest=match["digest"], secret=match["secret"])


# --- gRPC credentials -------------------------------------------------------------------


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
            ("grpc.max_send_message_length", 256 * 1024 * 1024)]


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    """Identity of the client's verified certificate; None if it presented none.

    Raises PKIError if the certificate lacks node fields (gRPC already verified it
    chains to our CA, so that means a misissued certificate).
    """
    certs = list(context.auth_context().get(_PEER_CERT_KEY, ()))
    if not certs:
        return None
    return identity_of(certs[0])


# --- trust on first use ------------------------------------------------------------------


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PKIError(f"invalid manager address {addr!r}: expected host:port")
    return host.strip("[]"), int(port)


def _chain_der(sock: ssl.SSLSocket) -> list[bytes]:
    # 3.13 has a public method returning DER; 3.11/3.12 only the private one on the
    # SSLObject, returning Certificate objects whose public_bytes() default to PEM.
    getter = getattr(sock, "get_unverified_chain", None)
    if getter is None:
        getter = sock._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    out = []
    for item in getter() or []:
        if isinstance(item, bytes):
            out.append(item)
        else:
            pem = item.public_bytes()
            pem = pem.encode() if isinstance(pem, str) else pem
            out.append(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
    return out


def _handshake_chain(addr: str, timeout: float) -> list[bytes]:
    host, port = _split_addr(addr)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted yet; the caller checks the digest
    ctx.set_alpn_protocols(["h2"])  # gRPC servers expect HTTP/2
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(
                raw, server_hostname=TLS_SERVER_NAME, do_handshake_on_connect=False
            ) as sock:
                try:
                    sock.do_handshake()
                except ssl.SSLError:
                    # A server demanding a client cert may abort after sending its chain
                    # (TLS 1.2); the chain we got is still what we came for.
                    chain = _chain_der(sock)
                    if chain:
                        return chain
                    raise
                return _chain_der(sock)
    except OSError as exc:
        raise PKIError(f"cannot fetch the root CA from manager at {addr}: {exc}") from exc


def fetch_root_ca_unverified(addr: str, timeout: float) -> bytes:
    """PEM of the self-signed root at the end of the TLS chain served at ``addr``.

    Unverified by design: the caller must compare ``ca_digest`` of the result with the
    digest in its join token before trusting it. Blocking; call via asyncio.to_thread.
    """
    chain = _handshake_chain(addr, timeout)
    if not chain:
        raise PKIError(f"manager at {addr} sent no certificate chain")
    root = x509.load_der_x509_certificate(chain[-1])
    try:
        if root.issuer != root.subject:
            raise ValueError("issuer differs from subject")
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PKIError(
            f"manager at {addr} did not send a self-signed root CA at the end of its "
            f"chain ({exc}); is it a swarm manager's cluster port?"
        ) from exc
    return root.public_bytes(serialization.Encoding.PEM)
