"""Keeps bench/failover.py from rotting: a --quick run (2 leader kills on a lab of 3
managers) must finish and report, for each kill, the time until a write through each
survivor was acknowledged, and the killed manager back in Raft.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "failover.py"


def test_failover_bench_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=280)

    figures = result["summary"]
    assert figures["runs"] == 2 and len(figures["all_s"]) == 2
    for field in ("p50_s", "max_s", "min_s"):
        assert figures[field] > 0, (field, figures)
    assert all(r > 0 for r in figures["p50_over_before"] + figures["p50_over_docker"])
    assert len(figures["per_survivor"]["all_s"]) == 4  # 2 survivors per kill
    for run in result["runs"]:
        assert run["killed"] not in run["survivor_ack_s"], run
        assert len(run["survivor_ack_s"]) == 2 and run["rejoined_s"] > 0, run
    assert "first ack on either survivor" in proc.stdout
