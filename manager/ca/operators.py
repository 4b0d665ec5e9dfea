"""Certificates for the TCP API, signed by the swarm's root CA: client certificates for
operators (`shoal ca issue-client`) and server certificates for a node's TCP listener
(`shoal ca issue-server`).

The caller makes the key pair and sends only a CSR; the CA decides everything else. The
subjects keep these certificates apart from node certificates: their OU is neither
`swarm-manager` nor `swarm-worker`, so the cluster's gRPC services (which read a node's role
from the OU) refuse them, and the API refuses worker node certificates (shoal/apitls.py).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from manager.ca.authority import RootCA, leaf_key_usage
from manager.ca.errors import CAError

CLIENT = "client"
SERVER = "server"
KINDS = (CLIENT, SERVER)
OPERATOR_OU = "swarm-operator"
API_SERVER_OU = "swarm-api"
MAX_HOSTS = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_DNS = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CAError(f"invalid certificate name {name!r}: 1 to 64 of [A-Za-z0-9._@-], "
                      "starting with a letter or digit")
    return name


def host_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names for a server certificate: IP addresses and DNS names."""
    if not hosts:
        raise CAError("a server certificate needs at least one host (IP address or DNS "
                      "name) that clients use to reach the listener, e.g. --host 10.0.0.1")
    if len(hosts) > MAX_HOSTS:
        raise CAError(f"a server certificate names at most {MAX_HOSTS} hosts, got {len(hosts)}")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _DNS.match(host):
            raise CAError(f"invalid host {host!r}: give an IP address or a DNS name")
        names.append(x509.DNSName(host))
    return names


def _subject(cluster_id: str, ou: str, common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def issue(root: RootCA, csr_pem: bytes, kind: str, name: str, hosts: list[str],
          cluster_id: str, expiry: timedelta) -> bytes:
    """A client (EKU clientAuth) or server (EKU serverAuth, SANs = hosts) certificate."""
    check_name(name)
    base: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (leaf_key_usage(), True),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key), False),
    ]
    if kind == CLIENT:
        if hosts:
            raise CAError("a client certificate names no hosts; hosts are for server ones")
        extensions = [*base, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)]
        return root.sign_certificate(csr_pem, _subject(cluster_id, OPERATOR_OU, name),
                                     extensions, expiry)
    if kind == SERVER:
        extensions = [*base, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
                      (x509.SubjectAlternativeName(host_names(hosts)), False)]
        return root.sign_certificate(csr_pem, _subject(cluster_id, API_SERVER_OU, name),
                                     extensions, expiry)
    raise CAError(f"unknown certificate kind {kind!r}: {' or '.join(KINDS)}")
