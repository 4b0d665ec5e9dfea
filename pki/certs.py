"""Node keys, CSRs, and a node's identity read out of its certificate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.errors import PKIError
from proto import objects_pb2

# Every node certificate carries this DNS SAN, and every client overrides the TLS target
# name to it, so nodes can dial each other by bare IP address.
TLS_SERVER_NAME = "swarm-manager"
CA_COMMON_NAME = "swarm-ca"
MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"


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


def load_cert(cert_pem: bytes) -> x509.Certificate:
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
    cert = load_cert(cert_pem)
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
