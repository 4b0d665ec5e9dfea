"""The TLS-protected TCP API on a real in-process cluster (1 manager, 1 worker): operator
and server certificates from `shoal ca issue-client|issue-server`, the API served over TLS
with shoald's context (shoal/apitls.py), and the shoal and docker CLIs with --tlsverify,
DOCKER_CERT_PATH/DOCKER_TLS_VERIFY; a client without a certificate, plain HTTP and a
worker node's certificate are refused."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal import apitls
from shoal.api.server import make_app
from tests.integration.test_service_cli import Served, served  # noqa: F401 (fixture)
from tests.integration.test_worker_fake import free_port_block

DOCKER = "/usr/local/bin/docker"


async def run(argv: list[str], env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                   timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})})


def shoal(host: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli.main", "-H", host, *args]


class Listener:
    def __init__(self, api: Served, tmp: Path) -> None:
        self.served, self.tmp = api, tmp
        self.port = free_port_block()
        self.host = f"tcp://127.0.0.1:{self.port}"


@pytest.fixture
async def tls_api(served: Served, tmp_path: Path) -> AsyncIterator[Listener]:  # noqa: F811
    unix = f"unix://{served.sock}"
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HOME": str(tmp_path)}
    for kind, extra in (("client", []), ("server", ["--host", "127.0.0.1"])):
        out = await run(shoal(unix, "ca", f"issue-{kind}", "--out", str(tmp_path / kind),
                              *extra), env)
        assert out.returncode == 0, out.stderr
    opts = apitls.ListenerTLS(verify=True, cacert=str(tmp_path / "server/ca.pem"),
                              cert=str(tmp_path / "server/cert.pem"),
                              key=str(tmp_path / "server/key.pem"))
    listener = Listener(served, tmp_path)
    runner = web.AppRunner(make_app(served.cluster.m))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", listener.port,
                      ssl_context=apitls.server_context(opts)).start()
    try:
        yield listener
    finally:
        await runner.cleanup()


async def test_issued_certificates(tls_api: Listener) -> None:
    client = tls_api.tmp / "client"
    assert stat.S_IMODE(os.stat(client / "key.pem").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((client / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((client / "ca.pem").read_bytes())
    assert ca.public_bytes(Encoding.PEM) == \
        tls_api.served.cluster.mgr.cluster().root_ca.ca_cert_pem
    cert.verify_directly_issued_by(ca)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert ou == "swarm-operator"
    server = x509.load_pem_x509_certificate((tls_api.tmp / "server/cert.pem").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


async def test_shoal_cli_with_tlsverify_and_docker_env(tls_api: Listener) -> None:
    d = tls_api.tmp / "client"
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HOME": str(tls_api.tmp)}
    out = await run(shoal(tls_api.host, "--tlsverify", "--tlscacert", str(d / "ca.pem"),
                          "--tlscert", str(d / "cert.pem"), "--tlskey", str(d / "key.pem"),
                          "node", "ls"), env)
    assert out.returncode == 0, out.stderr
    assert "m1" in out.stdout and "w1" in out.stdout
    out = await run(shoal(tls_api.host, "node", "ls"),
                    {**env, "DOCKER_CERT_PATH": str(d), "DOCKER_TLS_VERIFY": "1"})
    assert out.returncode == 0, out.stderr
    assert "w1" in out.stdout
    # Without a client certificate the daemon refuses the handshake.
    out = await run(shoal(tls_api.host, "--tlsverify", "--tlscacert", str(d / "ca.pem"),
                          "node", "ls"), env)
    assert out.returncode == 1 and "cannot connect" in out.stderr, out.stderr
    assert "w1" not in out.stdout


async def test_docker_cli_with_tlsverify(tls_api: Listener) -> None:
    d = tls_api.tmp / "client"
    env = {"DOCKER_CONFIG": str(tls_api.tmp / "docker-config")}
    flags = ["--tlsverify", "--tlscacert", str(d / "ca.pem"), "--tlscert", str(d / "cert.pem"),
             "--tlskey", str(d / "key.pem")]
    out = await run([DOCKER, *flags, "-H", tls_api.host, "node", "ls"], env)
    assert out.returncode == 0, out.stderr
    assert "w1" in out.stdout
    out = await run([DOCKER, "-H", tls_api.host, "node", "ls"],
                    {**env, "DOCKER_CERT_PATH": str(d), "DOCKER_TLS_VERIFY": "1"})
    assert out.returncode == 0, out.stderr
    out = await run([DOCKER, "--tlsverify", "--tlscacert", str(d / "ca.pem"), "-H",
                     tls_api.host, "node", "ls"], env)
    assert out.returncode != 0 and "w1" not in out.stdout
    # TLS 1.3: the client finishes its side first, then the daemon hangs up.
    assert "error during connect" in out.stderr, out.stderr
    out = await run([DOCKER, "-H", tls_api.host, "node", "ls"], env)  # plain HTTP
    assert out.returncode != 0 and "w1" not in out.stdout
    assert "error during connect" in out.stderr or "Cannot connect" in out.stderr, out.stderr


def _https_status(port: int, ctx: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/nodes")
        return conn.getresponse().status
    finally:
        conn.close()


async def test_plain_http_and_worker_certificates_are_refused(tls_api: Listener) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", tls_api.port, timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        await asyncio.to_thread(conn.request, "GET", "/nodes")
        await asyncio.to_thread(conn.getresponse)
    # A worker's node certificate chains to the same root CA, yet it is no operator.
    wdir = Path(tls_api.served.cluster.w.data.path) / "certificates"
    ctx = ssl.create_default_context(cafile=str(tls_api.tmp / "client/ca.pem"))
    ctx.load_cert_chain(wdir / "node.crt", wdir / "node.key")
    assert await asyncio.to_thread(_https_status, tls_api.port, ctx) == 403
    ctx = ssl.create_default_context(cafile=str(tls_api.tmp / "client/ca.pem"))
    ctx.load_cert_chain(tls_api.tmp / "client/cert.pem", tls_api.tmp / "client/key.pem")
    assert await asyncio.to_thread(_https_status, tls_api.port, ctx) == 200


async def test_the_nodes_own_certificate_serves_under_its_swarm_name(tls_api: Listener) -> None:
    """README: --tlscert/--tlskey may be the node's own swarm certificate; clients then
    reach it by the name it carries, swarm-manager."""
    node_certs = Path(tls_api.served.cluster.m.data.path) / "certificates"
    opts = apitls.ListenerTLS(verify=True, cacert=str(node_certs / "ca.crt"),
                              cert=str(node_certs / "node.crt"), key=str(node_certs / "node.key"))
    port = free_port_block()
    runner = web.AppRunner(make_app(tls_api.served.cluster.m))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=apitls.server_context(opts)).start()
    try:
        d = tls_api.tmp / "client"
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        ctx.load_cert_chain(d / "cert.pem", d / "key.pem")

        def status() -> int:
            conn = http.client.HTTPSConnection("swarm-manager", port, context=ctx, timeout=10)
            conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                        server_hostname="swarm-manager")
            conn.request("GET", "/nodes")
            return conn.getresponse().status

        assert await asyncio.to_thread(status) == 200
        with pytest.raises(ssl.SSLCertVerificationError):  # by address: not its name
            await asyncio.to_thread(_https_status, port, ctx)
    finally:
        await runner.cleanup()
