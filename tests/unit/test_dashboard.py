"""The dashboard's pure parts: which requests `shoal dashboard` forwards, which Host headers
it answers, and the static files shipped in the package."""

from __future__ import annotations

import pytest

from shoal.dashboard.assets import asset
from shoal.dashboard.proxy import ProxyError, host_allowed, refusal, upstream


@pytest.mark.parametrize("path", [
    "/dashboard", "/dashboard/", "/dashboard/app.js", "/dashboard/style.css", "/_ping",
    "/version", "/nodes", "/nodes/abc123", "/services", "/services/web", "/tasks",
    "/tasks/t1", "/networks", "/networks/net-1", "/events", "/v1.41/services", "/metrics",
])
def test_the_proxy_forwards_what_the_page_reads(path: str) -> None:
    assert refusal("GET", path) is None
    assert refusal("HEAD", path) is None


@pytest.mark.parametrize("path", [
    "/swarm", "/v1.50/swarm", "/secrets", "/configs", "/services/web/logs", "/tasks/t1/logs",
    "/containers/json", "/containers/abc/export", "/images/json", "/info", "/dashboard/../swarm",
    "/nodes/a/b", "/", "/dashboard/.hidden",
])
def test_the_proxy_forwards_nothing_else(path: str) -> None:
    refused = refusal("GET", path)
    assert refused is not None and refused[0] == 403
    assert path in refused[1]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_proxy_is_read_only(method: str) -> None:
    refused = refusal(method, "/services/web")
    assert refused is not None and refused[0] == 405
    assert "read-only" in refused[1]


@pytest.mark.parametrize(("header", "ok"), [
    ("127.0.0.1:8001", True), ("localhost:8001", True), ("[::1]:8001", True),
    ("127.0.0.1:8002", False), ("127.0.0.1", False), ("evil.example:8001", False),
    ("127.0.0.1.evil.example:8001", False), (None, False), ("", False),
])
def test_the_proxy_answers_only_to_its_own_host(header: str | None, ok: bool) -> None:
    assert host_allowed(header, "127.0.0.1", 8001) is ok


def test_a_proxy_on_another_address_answers_to_that_address_only() -> None:
    assert host_allowed("10.0.0.5:9000", "10.0.0.5", 9000)
    assert not host_allowed("localhost:9000", "10.0.0.5", 9000)


def test_upstream_of_each_kind_of_host() -> None:
    unix = upstream("unix:///run/shoal/shoal.sock", None)
    assert (unix.unix_path, unix.base) == ("/run/shoal/shoal.sock", "http://localhost")
    assert upstream("tcp://10.0.0.1:2375", None).base == "http://10.0.0.1:2375"
    with pytest.raises(ProxyError, match="unsupported host"):
        upstream("ssh://m1", None)


def test_the_static_files_are_in_the_package() -> None:
    index = asset("")
    assert index is not None and index.content_type == "text/html"
    assert b'src="app.js"' in index.body and b"http" not in index.body  # nothing from a CDN
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        found = asset(name)
        assert found is not None and found.content_type == kind and found.body
    for bad in ("../assets.py", "static/app.js", ".app.js", "missing.js", "assets.py"):
        assert asset(bad) is None
