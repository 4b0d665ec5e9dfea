"""Keeps bench/grpc_accept.py from rotting: a --quick run (real grpc.aio servers sharing a
port, clients in two other processes) must spread the connections over the servers and count
the calls answered.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system.helpers import run_bench

pytestmark = pytest.mark.system

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grpc_accept.py"


def test_grpc_accept_quick(tmp_path: Path) -> None:
    result, _ = run_bench(BENCH, tmp_path, "--quick", "--servers", "1", "4", "--full-ms", "0",
                          timeout=120)
    rows = {r["servers"]: r for r in result["rows"]}
    assert set(rows) == {1, 4}
    for servers, row in rows.items():
        assert row["calls_per_s"] > 10, row  # hundreds on an idle loop
        assert row["servers_used"] == servers, row  # SO_REUSEPORT spread the connections
