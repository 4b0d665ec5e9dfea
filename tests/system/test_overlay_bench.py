"""Keeps bench/overlay_bench.py from rotting: a --quick run must finish and report every
figure (throughput of the four kinds, resolver percentiles, scale-up and scale-down times).

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "overlay_bench.py"


def test_overlay_bench_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=400)

    gbps = result["throughput"]["gbps"]
    assert set(gbps) == {"underlay", "plain", "encrypted", "bare_wg"}
    assert all(value > 0 for value in gbps.values()), gbps
    assert result["throughput"]["plain_ratio"] > 0
    assert result["throughput"]["encrypted_ratio"] > 0
    for transport in ("udp", "tcp"):
        row = result["resolver"][transport]
        assert row["n"] == 300 and 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], row
    scale = result["scale"]
    assert len(scale["up_runs"]) == len(scale["down_runs"]) == 1
    assert scale["up_runs"][0]["s"] > 0
    down = scale["down_runs"][0]
    # every node's resolver and VIP backends were watched until the dead address left
    assert {k for k in down if k.endswith("_s")} >= {"m1_dns_s", "m1_nft_s", "w1_dns_s",
                                                    "w1_nft_s", "container_stopped_s"}
    assert down["s"] == max(down[f"{n}_{k}_s"] for n in ("m1", "w1") for k in ("dns", "nft"))
    assert set(result["goals_met"]) == {"plain_ratio", "encrypted_ratio", "resolver_p99_ms",
                                        "gone_s"}
    assert "iperf3 plain overlay" in proc.stdout
