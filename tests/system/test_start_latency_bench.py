"""Keeps bench/start_latency.py from rotting: a --quick run must finish and report each N.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "start_latency.py"
NUMBERS = ["ours_s", "seq_s", "conc_s", "baseline_s", "ratio", "ours_create_call_s",
           "ours_first_created_s", "ours_last_started_s"]


def test_start_latency_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "start_latency.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [row["n"] for row in rows] == [1, 5]
    for row in rows:
        for field in NUMBERS:
            assert row[field] > 0, (row["n"], field, row[field])
        assert row["baseline"] in ("seq", "conc")
        assert all(len(runs) == 1 for runs in row["runs"].values()), row["runs"]
    assert "ours/base" in proc.stdout
