"""Trust on first use: the root CA a joining node fetches, then checks against its token.

Nothing here trusts what it fetches; the caller compares ``ca_digest`` of the result with
the digest in its join token.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from pki.certs import TLS_SERVER_NAME
from pki.errors import PKIError


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
