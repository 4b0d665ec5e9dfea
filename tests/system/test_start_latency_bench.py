"""Keeps bench/start_latency.py from rotting: a --quick run must finish and report each N.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "start_latency.py"
NUMBERS = ["ours_s", "seq_s", "conc_s", "baseline_s", "ratio", "ours_create_call_s",
           "ours_first_created_s", "ours_last_started_s"]


def test_start_latency_bench_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=240)

    rows = result["rows"]
    assert [row["n"] for row in rows] == [1, 5]
    for row in rows:
        for field in NUMBERS:
            assert row[field] > 0, (row["n"], field, row[field])
        assert row["baseline"] in ("seq", "conc")
        assert all(len(runs) == 1 for runs in row["runs"].values()), row["runs"]
    assert "ours/base" in proc.stdout
