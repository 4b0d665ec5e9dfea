"""Keeps bench/store_bench.py from rotting: a --quick run must finish and report every row.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "store_bench.py"
ROWS = ["raw", "raw_nobatch", "store", "api_leader", "api_follower"]
NUMBERS = ["seq_writes_per_s", "conc_writes_per_s", "p50_ms", "p99_ms",
           "throughput_ratio", "throughput_ratio_same_k", "p50_ratio"]


def test_store_bench_quick(tmp_path: Path) -> None:
    result, proc = run_bench(BENCH, tmp_path, "--quick", timeout=240)

    rows = {row["key"]: row for row in result["rows"]}
    assert list(rows) == ROWS
    for key, row in rows.items():
        for field in NUMBERS:
            assert row[field] > 0, (key, field, row[field])
        assert row["seq_writes"] > 0 and row["conc_writes"] > 0, row
        if not key.startswith("api"):
            assert row["fol_seq_writes"] > 0 and row["fol_seq_p50_ms"] > 0, row
    assert rows["raw"]["conf"] == rows["store"]["conf"]
    for row in rows.values():
        assert row["label"] in proc.stdout
