"""shoal/apitls.py: which API listeners may start (dockerd's --tls/--tlsverify, our
--insecure-tcp), and manager/ca/operators.py: operator and API server certificates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from manager.ca import operators
from manager.ca.authority import RootCA
from manager.ca.errors import CAError
from shoal.apitls import ListenerTLS, TLSConfigError, check, peer_refusal

UNIX = "unix:///run/shoal/shoal.sock"
TCP = "tcp://10.0.0.1:2376"
FILES = {"cacert": "ca.pem", "cert": "cert.pem", "key": "key.pem"}


def test_unix_only_needs_nothing() -> None:
    assert check([UNIX], ListenerTLS()) == []


def test_tcp_without_tls_is_refused_saying_what_to_add() -> None:
    with pytest.raises(TLSConfigError) as err:
        check([UNIX, TCP], ListenerTLS())
    message = str(err.value)
    assert TCP in message and "--tlsverify" in message and "--insecure-tcp" in message
    assert "shoal ca issue-client" in message


def test_insecure_tcp_starts_with_a_warning() -> None:
    warnings = check([TCP], ListenerTLS(insecure_tcp=True))
    assert len(warnings) == 1 and TCP in warnings[0] and "--insecure-tcp" in warnings[0]


def test_tlsverify_needs_all_three_files() -> None:
    assert check([TCP], ListenerTLS(verify=True, **FILES)) == []
    with pytest.raises(TLSConfigError, match="--tlscacert"):
        check([TCP], ListenerTLS(verify=True, cert="c", key="k"))
    with pytest.raises(TLSConfigError, match="--tlscert and --tlskey"):
        check([TCP], ListenerTLS(tls=True))


def test_tls_without_verify_warns_that_anyone_may_connect() -> None:
    warnings = check([TCP], ListenerTLS(tls=True, cert="c", key="k"))
    assert len(warnings) == 1 and "--tlsverify" in warnings[0]


def test_worker_node_certificates_are_refused() -> None:
    worker = {"subject": ((("organizationName", "c1"),), (("organizationalUnitName",
                                                             "swarm-worker"),))}
    operator = {"subject": ((("organizationalUnitName", "swarm-operator"),),)}
    assert "worker" in (peer_refusal(worker) or "")
    assert peer_refusal(operator) is None
    assert peer_refusal(None) is None


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create()


def _issue(ca: RootCA, kind: str, hosts: list[str]) -> x509.Certificate:
    key = pki.new_key()
    pem = operators.issue(ca, pki.make_csr(key), kind, "alice", hosts, "c1", timedelta(days=1))
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.public_key() == key.public_key()  # the CSR's key; the CA never saw the key
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    return cert


def test_client_certificate(ca: RootCA) -> None:
    cert = _issue(ca, operators.CLIENT, [])
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    # Not a node: the cluster's gRPC services read the role from the OU and refuse it.
    with pytest.raises(pki.PKIError):
        pki.identity_of(cert.public_bytes(Encoding.PEM))


def test_server_certificate_names_its_hosts(ca: RootCA) -> None:
    cert = _issue(ca, operators.SERVER, ["198.18.0.2", "m1.example"])
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["198.18.0.2"]
    assert sans.get_values_for_type(x509.DNSName) == ["m1.example"]


@pytest.mark.parametrize("kind,hosts,name", [
    (operators.SERVER, [], "alice"), (operators.SERVER, ["bad host"], "alice"),
    (operators.CLIENT, ["10.0.0.1"], "alice"), ("admin", [], "alice"),
    (operators.CLIENT, [], "-x"),
])
def test_refusals(ca: RootCA, kind: str, hosts: list[str], name: str) -> None:
    with pytest.raises(CAError):
        operators.issue(ca, pki.make_csr(pki.new_key()), kind, name, hosts, "c1",
                        timedelta(days=1))
