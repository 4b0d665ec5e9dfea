"""manager.ca.authority: the root CA, node certificates and join-token admission."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import pki
from manager.ca.authority import (
    MAX_RETIRED_SECRETS,
    RootCA,
    check_join_token,
    new_join_tokens,
    rotate_token,
)
from manager.ca.errors import CAError, JoinRefused
from proto import objects_pb2


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create()


def sign(ca: RootCA, expiry: timedelta = timedelta(hours=1), role: int = 0) -> bytes:
    return ca.sign_node_certificate(pki.make_csr(pki.new_key()), "n1", role, "c1", expiry)


# --- root CA ---------------------------------------------------------------------------


def test_create_root_ca(ca: RootCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=swarm-ca"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=20 * 365 - 2) < lifetime <= timedelta(days=20 * 365)
    assert ca.digest == pki.ca_digest(ca.cert_pem)


def test_from_pem_round_trip(ca: RootCA) -> None:
    again = RootCA.from_pem(ca.cert_pem, ca.key_pem)
    assert again.digest == ca.digest
    pki.identity_of(sign(again))  # it can still sign


def test_from_pem_rejects_mismatched_key(ca: RootCA) -> None:
    with pytest.raises(CAError, match="does not belong"):
        RootCA.from_pem(ca.cert_pem, pki.key_pem(pki.new_key()))
    with pytest.raises(CAError, match="cannot load"):
        RootCA.from_pem(b"junk", ca.key_pem)


def test_from_pem_rejects_non_ca_cert(ca: RootCA) -> None:
    key = pki.new_key()
    leaf = ca.sign_node_certificate(pki.make_csr(key), "n", 0, "c", timedelta(hours=1))
    with pytest.raises(CAError, match="not a CA"):
        RootCA.from_pem(leaf, pki.key_pem(key))


# --- node certificates --------------------------------------------------------------------


@pytest.mark.parametrize("role", [objects_pb2.WORKER, objects_pb2.MANAGER])
def test_node_certificate_identity(ca: RootCA, role: int) -> None:
    ident = pki.identity_of(sign(ca, role=role))
    assert (ident.node_id, ident.role, ident.cluster_id) == ("n1", role, "c1")


def test_node_certificate_extensions(ca: RootCA) -> None:
    cert = x509.load_pem_x509_certificate(sign(ca))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"swarm-manager", "swarm-ca"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))


def test_node_certificate_expiry_honoured(ca: RootCA) -> None:
    now = datetime.now(UTC)
    ident = pki.identity_of(sign(ca, expiry=timedelta(minutes=2)))
    assert abs(ident.not_after - (now + timedelta(minutes=2))) < timedelta(seconds=5)
    # Back-dated an hour for clock skew.
    assert abs(ident.not_before - (now - timedelta(hours=1))) < timedelta(seconds=5)


def test_node_certificate_never_outlives_ca(ca: RootCA) -> None:
    ident = pki.identity_of(sign(ca, expiry=timedelta(days=100 * 365)))
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert ident.not_after == ca_cert.not_valid_after_utc


def test_rejects_csr_with_bad_signature(ca: RootCA) -> None:
    # Flip a bit inside the signature (the last bytes of the DER): still parseable,
    # no longer signed by the CSR's key.
    from cryptography.hazmat.primitives import serialization

    csr = x509.load_pem_x509_csr(pki.make_csr(pki.new_key()))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CAError, match="invalid signature"):
        ca.sign_node_certificate(tampered, "n1", 0, "c1", timedelta(hours=1))


@pytest.mark.parametrize(
    ("csr", "node_id", "role", "cluster", "expiry", "match"),
    [
        (b"junk", "n", 0, "c", timedelta(hours=1), "cannot parse"),
        (None, "", 0, "c", timedelta(hours=1), "node ID"),
        (None, "n", 0, "", timedelta(hours=1), "cluster ID"),
        (None, "n", 7, "c", timedelta(hours=1), "unknown node role"),
        (None, "n", 0, "c", timedelta(0), "positive"),
    ],
)
def test_sign_rejects_bad_requests(
    ca: RootCA,
    csr: bytes | None,
    node_id: str,
    role: int,
    cluster: str,
    expiry: timedelta,
    match: str,
) -> None:
    csr_pem = csr if csr is not None else pki.make_csr(pki.new_key())
    with pytest.raises(CAError, match=match):
        ca.sign_node_certificate(csr_pem, node_id, role, cluster, expiry)


# --- join tokens ---------------------------------------------------------------------------


def test_tokens_grant_their_roles(ca: RootCA) -> None:
    root = ca.to_proto()
    assert check_join_token(root.join_tokens.worker, root) == objects_pb2.WORKER
    assert check_join_token(root.join_tokens.manager, root) == objects_pb2.MANAGER
    assert root.join_tokens.worker != root.join_tokens.manager
    assert pki.parse_join_token(root.join_tokens.worker).digest == ca.digest


def test_refuses_malformed_token(ca: RootCA) -> None:
    with pytest.raises(JoinRefused, match="malformed"):
        check_join_token("abc", ca.to_proto())


def test_refuses_token_of_another_swarm(ca: RootCA) -> None:
    other = RootCA.create()
    foreign = new_join_tokens(other.digest).worker
    with pytest.raises(JoinRefused, match="does not match this swarm's root CA"):
        check_join_token(foreign, ca.to_proto())


def test_refuses_unknown_secret(ca: RootCA) -> None:
    guess = pki.format_join_token(ca.digest, pki.new_token_secret())
    with pytest.raises(JoinRefused, match="matches neither the worker nor the manager"):
        check_join_token(guess, ca.to_proto())


@pytest.mark.parametrize("role", [objects_pb2.WORKER, objects_pb2.MANAGER])
def test_rotated_token_is_refused_as_rotated(ca: RootCA, role: int) -> None:
    root = ca.to_proto()
    field = "worker" if role == objects_pb2.WORKER else "manager"
    old = getattr(root.join_tokens, field)
    other_before = getattr(root.join_tokens, "manager" if field == "worker" else "worker")
    rotate_token(root, role)
    new = getattr(root.join_tokens, field)
    assert new != old
    assert check_join_token(new, root) == role
    with pytest.raises(JoinRefused, match="was rotated.*docker swarm join-token"):
        check_join_token(old, root)
    # The other role's token is untouched.
    assert getattr(root.join_tokens, "manager" if field == "worker" else "worker") == other_before


def test_retired_secrets_are_bounded(ca: RootCA) -> None:
    root = ca.to_proto()
    first = root.join_tokens.worker
    for _ in range(MAX_RETIRED_SECRETS + 5):
        rotate_token(root, objects_pb2.WORKER)
    assert len(root.retired_token_secrets) == MAX_RETIRED_SECRETS
    # Forgotten after enough rotations: still refused, just without the reason.
    with pytest.raises(JoinRefused, match="matches neither"):
        check_join_token(first, root)


def test_rotate_unknown_role(ca: RootCA) -> None:
    with pytest.raises(CAError):
        rotate_token(ca.to_proto(), 5)
