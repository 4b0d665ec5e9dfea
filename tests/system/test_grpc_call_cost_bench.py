"""Keeps bench/grpc_call_cost.py from rotting: a --quick run (a real grpc.aio server and
client on loopback) must count the calls it made and the server's CPU for them.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grpc_call_cost.py"


def test_grpc_call_cost_quick(tmp_path: Path) -> None:
    result, _ = run_bench(BENCH, tmp_path, "--quick", "--rate", "30", "--idle-connections",
                          "20", timeout=120)
    rows = {r["kind"]: r for r in result["rows"]}
    assert set(rows) == {"unary", "stream", "idle"}
    for kind in ("unary", "stream"):
        assert rows[kind]["calls"] > 10, rows[kind]  # ~90 at 30/s for 3 s
        assert rows[kind]["server_cpu_s"] > 0 and rows[kind]["server_cpu_ms_per_call"] > 0
    assert rows["idle"]["calls"] == 0 and rows["idle"]["connections"] == 20
