"""Keeps bench/api_load.py from rotting: a --quick run (a real shoald manager on loopback, 20
fake nodes over gRPC+mTLS, 100 tasks; 10 clients listing, a writer and a rolling update for 5
s; then `docker service ls` and `shoal service ls` on 40 services) must finish and report
every figure.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "api_load.py"
LATENCY = ("count", "p50_ms", "p95_ms", "p99_ms", "max_ms")


def test_api_load_bench_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=300)

    assert result["config"]["nodes"] == 20 and result["config"]["tasks"] == 100
    load = result["load"]
    for name in ("services", "tasks"):
        endpoint = load["endpoints"][name]
        assert all(key in endpoint for key in LATENCY), endpoint
        assert endpoint["count"] > 0 and endpoint["requests_per_s"] > 0, endpoint
        assert endpoint["errors"] == 0, (name, load["errors"])
    writer = load["writer"]
    assert writer["count"] > 0 and writer["errors"] == 0, (writer, load["errors"])
    assert all(key in writer for key in (*LATENCY, "over_1s", "stall_max_ms"))
    assert load["rolling_updates"]["started"] >= 1
    assert load["leader"]["rss_peak_mib"] > 0 and load["leader"]["cpu_s"] > 0
    assert load["error_count"] == 0, load["errors"]
    assert load["nodes"]["samples"] > 0 and load["nodes"]["max_down"] >= 0
    # The leader heard every node within the load (it reports each node's heartbeat age).
    assert load["nodes"]["heartbeat_age_max_s"] > 0 and load["nodes"]["heartbeat_period_s"] > 0

    cli = result["cli"]
    assert cli["services"] == 40
    assert cli["shoal"]["rows"] == 40 and cli["shoal"]["median_s"] > 0
    assert cli["api_services_status"]["median_s"] > 0
    assert shutil.which("docker"), "the docker CLI (docker.io, installed by make test)"
    assert cli["docker"]["rows"] == 40 and cli["docker"]["median_s"] > 0
    assert "GET /services" in cli["docker_requests"]
    assert set(result["goals"]) >= {"services_p99_le_1s", "tasks_p99_le_1s",
                                    "no_write_over_1s"}
    assert "GET /services?status=true" in proc.stdout
