"""The cluster's root CA: issuing node certificates and admitting joins by token."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from manager.ca.errors import CAError, JoinRefused
from proto import objects_pb2

CA_VALIDITY = timedelta(days=20 * 365)
# Back-date certificates so a node whose clock is slightly behind accepts them at once.
BACKDATE = timedelta(hours=1)
# Enough history to name recently rotated tokens, bounded so the cluster object stays small.
MAX_RETIRED_SECRETS = 64

_ROLE_NAMES: dict[int, str] = {objects_pb2.WORKER: "worker", objects_pb2.MANAGER: "manager"}


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


class RootCA:
    """A root certificate with its private key (held only by managers)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._digest = pki.ca_digest(self._cert_pem)

    @classmethod
    def create(cls) -> RootCA:
        key = pki.new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pki.CA_COMMON_NAME)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> RootCA:
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = pki.load_key(key_pem)
        except (ValueError, pki.PKIError) as exc:
            raise CAError(f"cannot load the swarm's root CA: {exc}") from exc
        if cert.public_key() != key.public_key():
            raise CAError("the root CA key does not belong to the root CA certificate")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CAError("the root CA certificate is not a CA certificate (BasicConstraints)")
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def key_pem(self) -> bytes:
        return pki.key_pem(self._key)

    @property
    def digest(self) -> str:
        return self._digest

    def to_proto(self) -> objects_pb2.RootCA:
        """A cluster's RootCA object for this CA, with fresh join tokens."""
        return objects_pb2.RootCA(
            ca_cert_pem=self.cert_pem,
            ca_key_pem=self.key_pem,
            ca_digest=self.digest,
            join_tokens=new_join_tokens(self.digest),
        )

    def sign_node_certificate(
        self, csr_pem: bytes, node_id: str, role: int, cluster_id: str, expiry: timedelta
    ) -> bytes:
        """Issue a node certificate (PEM) for the CSR's key; the CA decides the subject."""
        subject = _node_subject(node_id, role, cluster_id)
        return self.sign_certificate(csr_pem, subject, _node_extensions(self._key.public_key()),
                                     expiry)

    def sign_certificate(
        self, csr_pem: bytes, subject: x509.Name,
        extensions: list[tuple[x509.ExtensionType, bool]], expiry: timedelta,
    ) -> bytes:
        """Sign the CSR's key under `subject` with `extensions` ((extension, critical)
        pairs); only the key is taken from the CSR."""
        csr = _load_csr(csr_pem)
        if expiry <= timedelta(0):
            raise CAError(f"certificate expiry must be positive, got {expiry}")
        now = datetime.now(UTC)
        # A certificate never outlives the CA that vouches for it.
        not_after = min(now + expiry, self._cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()


def _node_subject(node_id: str, role: int, cluster_id: str) -> x509.Name:
    if not node_id or not cluster_id:
        raise CAError("a node certificate needs a node ID and a cluster ID")
    try:
        ou = pki.role_ou(role)
    except pki.PKIError as exc:
        raise CAError(f"cannot issue a certificate for node {node_id}: {exc}") from exc
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        ]
    )


def _node_extensions(
    ca_public_key: ec.EllipticCurvePublicKey,
) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) pairs of a node certificate: a TLS client and server."""
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    # Every node can serve TLS under the name clients override their target to.
    sans = [x509.DNSName(pki.TLS_SERVER_NAME), x509.DNSName(pki.CA_COMMON_NAME)]
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (leaf_key_usage(), True),
        (x509.ExtendedKeyUsage(eku), False),
        (x509.SubjectAlternativeName(sans), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public_key), False),
    ]


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CAError(f"cannot parse certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise CAError("certificate signing request has an invalid signature")
    return csr


# --- join tokens --------------------------------------------------------------------------


def new_join_tokens(digest: str) -> objects_pb2.JoinTokens:
    return objects_pb2.JoinTokens(
        worker=pki.format_join_token(digest, pki.new_token_secret()),
        manager=pki.format_join_token(digest, pki.new_token_secret()),
    )


def _secret_of(token: str) -> str | None:
    try:
        return pki.parse_join_token(token).secret
    except pki.TokenError:
        return None


def _secret_matches(secret: str, candidate: str | None) -> bool:
    if candidate is None:
        return False
    return hmac.compare_digest(secret.encode(), candidate.encode())


def check_join_token(token: str, root_ca: objects_pb2.RootCA) -> int:
    """The NodeRole ``token`` admits to this swarm; JoinRefused says why not."""
    try:
        parsed = pki.parse_join_token(token)
    except pki.TokenError as exc:
        raise JoinRefused(str(exc)) from exc
    # The digest is recomputed from the certificate rather than read from ca_digest, so a
    # stale or differently encoded stored digest cannot admit or refuse by mistake.
    if not hmac.compare_digest(parsed.digest, pki.ca_digest(root_ca.ca_cert_pem)):
        raise JoinRefused(
            "the join token's CA digest does not match this swarm's root CA: the token "
            "belongs to another swarm, or the CA was rotated"
        )
    # Evaluate both before branching so timing does not reveal which role was tried.
    is_worker = _secret_matches(parsed.secret, _secret_of(root_ca.join_tokens.worker))
    is_manager = _secret_matches(parsed.secret, _secret_of(root_ca.join_tokens.manager))
    if is_manager:
        return objects_pb2.MANAGER
    if is_worker:
        return objects_pb2.WORKER
    retired = [_secret_matches(parsed.secret, s) for s in root_ca.retired_token_secrets]
    if any(retired):
        raise JoinRefused(
            "this join token was rotated and is no longer valid; get the current one with "
            "`docker swarm join-token worker|manager` on a manager"
        )
    raise JoinRefused(
        "invalid join token: it matches neither the worker nor the manager token of this swarm"
    )


def rotate_token(root_ca: objects_pb2.RootCA, role: int) -> None:
    """Replace the join token for ``role``, remembering the old secret as retired."""
    if role not in _ROLE_NAMES:
        raise CAError(f"cannot rotate the join token of unknown node role {role}")
    field = _ROLE_NAMES[role]
    old = _secret_of(getattr(root_ca.join_tokens, field))
    if old is not None:
        root_ca.retired_token_secrets.append(old)
        excess = len(root_ca.retired_token_secrets) - MAX_RETIRED_SECRETS
        if excess > 0:
            del root_ca.retired_token_secrets[:excess]
    digest = pki.ca_digest(root_ca.ca_cert_pem)
    setattr(root_ca.join_tokens, field, pki.format_join_token(digest, pki.new_token_secret()))
