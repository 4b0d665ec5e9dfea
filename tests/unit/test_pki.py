"""pki: tokens, identities, gRPC mutual TLS and the unverified root CA fetch."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
import pytest

import pki
from manager.ca.authority import RootCA
from proto import objects_pb2

CLUSTER = "clusterid0123"
METHOD = "/shoal.test.Probe/Whoami"


@dataclass
class NodeCreds:
    key_pem: bytes
    cert_pem: bytes


def issue(ca: RootCA, node_id: str, role: int = objects_pb2.WORKER) -> NodeCreds:
    key = pki.new_key()
    cert = ca.sign_node_certificate(pki.make_csr(key), node_id, role, CLUSTER, timedelta(hours=1))
    return NodeCreds(pki.key_pem(key), cert)


@pytest.fixture(scope="module")
def ca() -> RootCA:
    return RootCA.create()


# --- tokens ------------------------------------------------------------------------------


def test_token_round_trip(ca: RootCA) -> None:
    secret = pki.new_token_secret()
    text = pki.format_join_token(ca.digest, secret)
    assert text.startswith("SWMTKN-1-")
    assert len(ca.digest) == 50 and len(secret) == 25
    assert pki.parse_join_token(text) == pki.JoinToken(digest=ca.digest, secret=secret)
    # Pasted tokens often carry a trailing newline.
    assert pki.parse_join_token(text + "\n").secret == secret


def test_secrets_are_random_and_padded() -> None:
    secrets = {pki.new_token_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(len(s) == 25 and s.isalnum() and s == s.lower() for s in secrets)


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "",
        "SWMTKN-2-" + "0" * 50 + "-" + "0" * 25,
        "SWMTKN-1-" + "0" * 49 + "-" + "0" * 25,
        "SWMTKN-1-" + "0" * 50 + "-" + "0" * 26,
        "SWMTKN-1-" + "0" * 50 + "-" + "A" * 25,
    ],
)
def test_malformed_tokens(text: str) -> None:
    with pytest.raises(pki.TokenError, match="malformed, expected SWMTKN-1-<50-char CA digest>"):
        pki.parse_join_token(text)


def test_malformed_token_message_names_short_input() -> None:
    with pytest.raises(pki.TokenError, match='invalid join token "abc": malformed'):
        pki.parse_join_token("abc")


def test_malformed_token_message_does_not_echo_a_whole_secret() -> None:
    near_miss = "SWMTKN-1-" + "7" * 50 + "-" + "9" * 24
    with pytest.raises(pki.TokenError) as info:
        pki.parse_join_token(near_miss)
    assert "9" * 24 not in str(info.value)


def test_ca_digest_is_base36_of_sha256(ca: RootCA) -> None:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(ca.cert_pem).public_bytes(serialization.Encoding.DER)
    expected = int.from_bytes(hashlib.sha256(der).digest(), "big")
    assert int(pki.ca_digest(ca.cert_pem), 36) == expected
    assert pki.ca_digest(ca.cert_pem) == ca.digest


# --- keys and identities -------------------------------------------------------------------


def test_key_round_trip() -> None:
    key = pki.new_key()
    assert pki.load_key(pki.key_pem(key)).private_numbers() == key.private_numbers()
    with pytest.raises(pki.PKIError):
        pki.load_key(b"not a key")


def test_identity_of_signed_cert(ca: RootCA) -> None:
    creds = issue(ca, "node-a", objects_pb2.MANAGER)
    ident = pki.identity_of(creds.cert_pem)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("node-a", objects_pb2.MANAGER, CLUSTER)
    assert ident.not_before < ident.not_after
    assert ident.not_after.tzinfo is not None


def test_identity_of_cert_without_node_fields(ca: RootCA) -> None:
    # The CA's own certificate has only a CN.
    with pytest.raises(pki.PKIError, match="lacks a single"):
        pki.identity_of(ca.cert_pem)
    with pytest.raises(pki.PKIError):
        pki.identity_of(b"garbage")


def test_channel_credentials_need_key_and_cert_together(ca: RootCA) -> None:
    with pytest.raises(pki.PKIError):
        pki.channel_credentials(ca.cert_pem, key_pem=b"k")


# --- gRPC mutual TLS ---------------------------------------------------------------------


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    ident = pki.peer_identity(context)
    if ident is None:
        return b"anonymous"
    return f"{ident.node_id}|{ident.role}|{ident.cluster_id}".encode()


async def _start_server(creds: grpc.ServerCredentials) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "shoal.test.Probe", {"Whoami": grpc.unary_unary_rpc_method_handler(_whoami)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port


@pytest.fixture
async def mtls_server(ca: RootCA) -> AsyncIterator[int]:
    node = issue(ca, "manager-1", objects_pb2.MANAGER)
    creds = pki.server_credentials(node.key_pem, node.cert_pem, ca.cert_pem, True)
    server, port = await _start_server(creds)
    yield port
    await server.stop(None)


async def _call(port: int, creds: grpc.ChannelCredentials) -> bytes:
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=pki.channel_options()
    ) as channel:
        # No (de)serializers: the generic handler passes raw bytes both ways.
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        reply: bytes = await call(b"", timeout=3)
        return reply


async def test_client_with_cluster_cert_is_identified(ca: RootCA, mtls_server: int) -> None:
    client = issue(ca, "worker-7", objects_pb2.WORKER)
    creds = pki.channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)
    reply = await _call(mtls_server, creds)
    assert reply == f"worker-7|{objects_pb2.WORKER}|{CLUSTER}".encode()


async def test_client_without_cert_is_refused(ca: RootCA, mtls_server: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(mtls_server, pki.channel_credentials(ca.cert_pem))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_with_foreign_cert_is_refused(ca: RootCA, mtls_server: int) -> None:
    other = RootCA.create()
    client = issue(other, "intruder", objects_pb2.MANAGER)
    # It trusts our CA for the server, but its own cert comes from another swarm.
    creds = pki.channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(mtls_server, creds)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_rejects_server_of_another_ca(ca: RootCA, mtls_server: int) -> None:
    other = RootCA.create()
    client = issue(ca, "worker-8")
    creds = pki.channel_credentials(other.cert_pem, client.key_pem, client.cert_pem)
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(mtls_server, creds)


async def test_peer_identity_none_without_client_auth(ca: RootCA) -> None:
    node = issue(ca, "manager-2", objects_pb2.MANAGER)
    creds = pki.server_credentials(node.key_pem, node.cert_pem, ca.cert_pem, False)
    server, port = await _start_server(creds)
    try:
        assert await _call(port, pki.channel_credentials(ca.cert_pem)) == b"anonymous"
    finally:
        await server.stop(None)


# --- unverified root CA fetch ---------------------------------------------------------------


@pytest.mark.parametrize("require_client_auth", [False, True])
async def test_fetch_root_ca_unverified(ca: RootCA, require_client_auth: bool) -> None:
    node = issue(ca, "manager-3", objects_pb2.MANAGER)
    chain = node.cert_pem + ca.cert_pem
    creds = pki.server_credentials(node.key_pem, chain, ca.cert_pem, require_client_auth)
    server, port = await _start_server(creds)
    try:
        root = await asyncio.to_thread(pki.fetch_root_ca_unverified, f"127.0.0.1:{port}", 3.0)
    finally:
        await server.stop(None)
    assert pki.ca_digest(root) == ca.digest


async def test_fetch_root_ca_without_root_in_chain(ca: RootCA) -> None:
    node = issue(ca, "manager-4", objects_pb2.MANAGER)
    creds = pki.server_credentials(node.key_pem, node.cert_pem, ca.cert_pem, False)
    server, port = await _start_server(creds)
    try:
        with pytest.raises(pki.PKIError, match="self-signed root CA"):
            await asyncio.to_thread(pki.fetch_root_ca_unverified, f"127.0.0.1:{port}", 3.0)
    finally:
        await server.stop(None)


def test_fetch_root_ca_unreachable_names_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"127.0.0.1:{port}"
    with pytest.raises(pki.PKIError, match=addr):
        pki.fetch_root_ca_unverified(addr, 1.0)


def test_fetch_root_ca_bad_address() -> None:
    with pytest.raises(pki.PKIError, match="host:port"):
        pki.fetch_root_ca_unverified("no-port-here", 1.0)


def test_fetch_root_ca_from_non_tls_port_names_address() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        addr = f"127.0.0.1:{listener.getsockname()[1]}"

        def answer_plain_http() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer_plain_http, daemon=True)
        thread.start()
        with pytest.raises(pki.PKIError, match=addr):
            pki.fetch_root_ca_unverified(addr, 2.0)
        thread.join(timeout=2)


def test_the_identity_cache_holds_every_node_of_a_large_swarm() -> None:
    """Each call's peer certificate is parsed once per node: the cache has room for the
    5,000 nodes of the scale goal (4,096 made such a leader parse them again and again)."""
    from pki import grpc_tls

    maxsize = grpc_tls._identity.cache_info().maxsize
    assert maxsize is not None and maxsize >= 5000
