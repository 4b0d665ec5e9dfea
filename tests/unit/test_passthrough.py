"""What the engine passthrough keeps for Shoal and how it rewrites a request's path."""

from __future__ import annotations

import pytest

from shoal.api.passthrough import lower_version, shoal_path


@pytest.mark.parametrize("path,ours", [
    ("/_ping", True), ("/v1.44/version", True), ("/info", True), ("/v1.50/events", True),
    ("/services/web/update", True), ("/v1.41/swarm/unlockkey", True), ("/nodes", True),
    ("/tasks/x/logs", True), ("/networks/create", True), ("/v1.44/secrets", True),
    ("/configs/c", True), ("/distribution/busybox/json", True),
    ("/containers/json", False), ("/v1.44/containers/abc/attach", False),
    ("/exec/abc/start", False), ("/images/json", False), ("/v1.41/volumes/create", False),
    ("/build", False), ("/plugins", False), ("/system/df", False), ("/auth", False),
    ("/commit", False), ("/no/such/thing", False), ("/", False),
    ("/v1.44", False),  # not a versioned path of anything: the engine's 404
    ("/servicesx", False),
])
def test_shoal_keeps_the_swarm_subset(path: str, ours: bool) -> None:
    assert shoal_path(path) is ours


@pytest.mark.parametrize("raw,engine,sent", [
    ("/v1.44/containers/json?all=1", "1.41", "/v1.41/containers/json?all=1"),
    ("/v1.50/images/a%2Fb/json", "1.41", "/v1.41/images/a%2Fb/json"),
    ("/v1.41/containers/json", "1.41", "/v1.41/containers/json"),
    ("/v1.24/containers/json", "1.41", "/v1.24/containers/json"),  # older: as asked
    ("/v1.9/containers/json", "1.41", "/v1.9/containers/json"),  # numbers, not strings
    ("/v1.100/containers/json", "1.41", "/v1.41/containers/json"),
    ("/containers/json", "1.41", "/containers/json"),  # unversioned: the engine's own
])
def test_a_version_above_the_engines_is_lowered_to_it(raw: str, engine: str,
                                                      sent: str) -> None:
    assert lower_version(raw, engine) == sent
