"""Keeps bench/idle_cpu.py from rotting: a --quick run (a real shoald manager on loopback,
20 fake nodes over gRPC+mTLS, 100 tasks) must finish and report the manager's idle CPU
alone, with the nodes and no task, and with the tasks running.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "idle_cpu.py"


def test_idle_cpu_bench_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=240)

    figures = result["figures"]
    assert figures["nodes"] == 20 and figures["tasks"] == 100
    for row in ("no_nodes", "no_tasks", "tasks"):
        manager = result[row]["manager"]
        assert manager["cpu_pct"] >= 0 and manager["rss_peak_mib"] > 0, (row, manager)
    assert result["tasks"]["manager"]["cpu_s"] >= 0
    assert result["run"]["running_s"] > 0
    assert "manager idle" in proc.stdout
