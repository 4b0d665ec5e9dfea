"""The dashboard on the TLS-protected TCP API (issue 10 item 3): served there under the API's
own TLS (an operator's client certificate is needed), and `shoal dashboard` proxies to such
a listener with the CLI's --tlsverify options, on a real in-process cluster."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_api_tls import Listener, tls_api  # noqa: F401 (fixture)
from tests.integration.test_service_cli import served  # noqa: F401 (fixture)


def _tls_flags(d: Path) -> list[str]:
    return ["--tlsverify", "--tlscacert", str(d / "ca.pem"), "--tlscert", str(d / "cert.pem"),
            "--tlskey", str(d / "key.pem")]


def _fetch(url: str, ctx: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read()


async def test_the_tls_listener_serves_the_dashboard_to_operators_only(
        tls_api: Listener) -> None:  # noqa: F811
    d = tls_api.tmp / "client"
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    url = f"https://127.0.0.1:{tls_api.port}/dashboard/"
    status, kind, body = await asyncio.to_thread(_fetch, url, ctx)
    assert status == 200 and kind.startswith("text/html") and b"app.js" in body
    anonymous = ssl.create_default_context(cafile=str(d / "ca.pem"))
    with pytest.raises((ssl.SSLError, OSError)):  # no client certificate: no page
        await asyncio.to_thread(_fetch, url, anonymous)


async def test_shoal_dashboard_proxies_to_a_tls_listener(tls_api: Listener) -> None:  # noqa: F811
    argv = [sys.executable, "-m", "shoal.cli.main", "-H", tls_api.host,
            *_tls_flags(tls_api.tmp / "client"), "dashboard", "--port", "0"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = ""
        while not url and (line := await asyncio.wait_for(proc.stdout.readline(), 30)):
            if match := re.match(r"^(http://127\.0\.0\.1:\d+/dashboard/)$", line.decode().strip()):
                url = match.group(1)
        assert url, await proc.stderr.read() if proc.stderr else b""
        status, kind, _ = await asyncio.to_thread(_fetch, url)
        assert status == 200 and kind.startswith("text/html")
        status, _, body = await asyncio.to_thread(_fetch, url.replace("/dashboard/", "/nodes"))
        assert status == 200 and len(json.loads(body)) == 2
    finally:
        proc.terminate()
        await proc.wait()


async def test_shoal_dashboard_without_a_client_certificate_fails(
        tls_api: Listener) -> None:  # noqa: F811
    argv = [sys.executable, "-m", "shoal.cli.main", "-H", tls_api.host, "--tlsverify",
            "--tlscacert", str(tls_api.tmp / "client/ca.pem"), "dashboard", "--port", "0"]
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                  timeout=30, env={"HOME": str(tls_api.tmp),
                                                   "PATH": "/usr/bin:/bin",
                                                   "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 1 and "cannot connect" in out.stderr, out.stderr
