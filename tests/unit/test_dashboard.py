"""The dashboard's pure parts: which requests `shoal dashboard` forwards, which Host headers
it answers, and the static files shipped in the package."""

from __future__ import annotations

import pytest

from shoal.dashboard.assets import asset
from shoal.dashboard.policy import forged, host_allowed, refusal
from shoal.dashboard.proxy import ProxyError, upstream


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
@pytest.mark.parametrize("path", ["/services/web", "/services/web/update", "/nodes/w1/update"])
def test_the_proxy_is_read_only(method: str, path: str) -> None:
    refused = refusal(method, path)
    assert refused is not None and refused[0] == 405
    assert "--allow-actions" in refused[1]


@pytest.mark.parametrize("path", ["/services/web/update", "/v1.41/services/abc/update",
                                  "/nodes/w1/update"])
def test_allowed_actions_are_service_and_node_updates(path: str) -> None:
    assert refusal("POST", path, actions=True) is None


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/services/create"), ("DELETE", "/services/web"), ("POST", "/swarm/update"),
    ("POST", "/nodes/w1/update/x"), ("POST", "/secrets/create"), ("PUT", "/nodes/w1/update"),
    ("POST", "/containers/create"),
])
def test_actions_allow_nothing_else(method: str, path: str) -> None:
    refused = refusal(method, path, actions=True)
    assert refused is not None and refused[0] == 405 and "updates only" in refused[1]


OWN = "http://127.0.0.1:8001"


@pytest.mark.parametrize(("headers", "why"), [
    ({"Content-Type": "application/json"}, "X-Shoal-Dashboard"),
    ({"X-Shoal-Dashboard": "1", "Content-Type": "text/plain"}, "JSON"),
    ({"X-Shoal-Dashboard": "1", "Content-Type": "application/json",
      "Origin": "http://evil.example"}, "not http://evil.example"),
    ({"X-Shoal-Dashboard": "1", "Content-Type": "application/json", "Origin": "null"},
     "not null"),
])
def test_actions_come_only_from_the_page(headers: dict[str, str], why: str) -> None:
    refused = forged(headers, OWN)
    assert refused is not None and refused[0] == 403 and why in refused[1]


def test_an_action_of_the_page_is_forwarded() -> None:
    headers = {"X-Shoal-Dashboard": "1", "Content-Type": "application/json"}
    assert forged(headers, OWN) is None
    assert forged(headers | {"Origin": OWN}, OWN) is None


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
