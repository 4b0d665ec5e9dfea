"""Keeps bench/entry_cost.py from rotting: a --quick run must time applying task changes
under each collector setting and what pysyncobj's connection does to sealed entries.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.gcwatch import THRESHOLDS
from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "entry_cost.py"


def test_entry_cost_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=120)
    assert result["config"]["tasks"] == 2_000 and result["config"]["thresholds"] == list(THRESHOLDS)
    rows = result["apply_us_per_task"]
    assert set(rows) == {"cpython", "shoald", "off"}
    assert all(row[kind] > 0 for row in rows.values() for kind in ("create", "update"))
    send = result["send_us_per_task_per_follower"]
    assert send["level3"] > 0 and send["stored"] > 0
    assert result["entry_bytes_per_task"] > 100  # a sealed task, not an empty batch
    assert "shoald / cpython" in proc.stdout
