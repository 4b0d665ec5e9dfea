"""How many unary calls a gRPC asyncio server takes in while its event loop is full.

gRPC's asyncio server accepts one new call per turn or two of the event loop. A leader whose
loop always has work ready (controllers, store events, streams) turns slowly, and calls wait
unaccepted (gRPC cancels them after 30 s) however cheap their handlers are. This measures,
in one process, N servers on one port (SO_REUSEPORT) with H ms of other work ready in every
turn of the loop (tasks of 0.2 ms each that yield and come back), against clients in two
other processes making 200 connections (one per channel, as nodes do), each calling in a
loop with 50 ms between calls.

    .venv/bin/python bench/grpc_accept.py                # servers 1 and 4, full loop 0 and 20 ms
    .venv/bin/python bench/grpc_accept.py --servers 1 2 4 8 --full-ms 20
    .venv/bin/python bench/grpc_accept.py --quick        # 2 s per row

Results: a table on stdout and bench/results/grpc_accept.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

import grpc

RESULTS = Path(__file__).resolve().parent / "results" / "grpc_accept.json"
SLICE = 0.0002  # seconds of work per turn of each loop-filling task
CONNECTIONS = 100  # per client process
PAUSE = 0.05  # between a connection's calls


def _handler(counts: dict[int, int], index: int) -> grpc.GenericRpcHandler:
    async def ping(_request: bytes, _context: Any) -> bytes:
        counts[index] = counts.get(index, 0) + 1
        return b"ok"
    return grpc.method_handlers_generic_handler(
        "bench.Accept", {"Ping": grpc.unary_unary_rpc_method_handler(ping)})


async def _serve(servers: int, port: int, full_ms: float, seconds: float, out: Any) -> None:
    counts: dict[int, int] = {}
    started = []
    for index in range(servers):
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((_handler(counts, index),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        started.append(server)

    async def fill() -> None:
        while True:
            start = time.perf_counter()
            while time.perf_counter() - start < SLICE:
                pass
            await asyncio.sleep(0)

    fillers = [asyncio.create_task(fill()) for _ in range(int(full_ms / 1000 / SLICE))]
    await asyncio.sleep(seconds + 2)
    out.put(dict(counts))
    for task in fillers:
        task.cancel()
    for server in started:
        await server.stop(None)


def _server_main(servers: int, port: int, full_ms: float, seconds: float, out: Any) -> None:
    asyncio.run(_serve(servers, port, full_ms, seconds, out))


def _client_main(port: int, seconds: float, out: Any) -> None:
    async def run() -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                              options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(CONNECTIONS)]
        latencies: list[float] = []
        failed = 0
        end = time.monotonic() + seconds

        async def loop(channel: grpc.aio.Channel) -> None:
            nonlocal failed
            call = channel.unary_unary("/bench.Accept/Ping")
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    await call(b"x", timeout=10)
                    latencies.append(time.perf_counter() - start)
                except grpc.aio.AioRpcError:
                    failed += 1
                await asyncio.sleep(PAUSE)

        await asyncio.gather(*(loop(c) for c in channels))
        for channel in channels:
            await channel.close()
        out.put({"latencies": latencies, "failed": failed})
    asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(servers: int, full_ms: float, seconds: float) -> dict[str, Any]:
    port = _free_port()
    server_out: Any = multiprocessing.Queue()
    client_out: Any = multiprocessing.Queue()
    server = multiprocessing.Process(target=_server_main,
                                     args=(servers, port, full_ms, seconds, server_out))
    server.start()
    time.sleep(1.5)
    clients = [multiprocessing.Process(target=_client_main, args=(port, seconds, client_out))
               for _ in range(2)]
    for client in clients:
        client.start()
    results = [client_out.get() for _ in clients]
    for client in clients:
        client.join()
    per_server = server_out.get()
    server.join(10)
    latencies = sorted(x for r in results for x in r["latencies"])
    def pct(q: float) -> float | None:
        return round(latencies[int(q * (len(latencies) - 1))] * 1000, 1) if latencies else None
    return {"servers": servers, "full_ms": full_ms, "seconds": seconds,
            "calls_per_s": round(len(latencies) / seconds, 1),
            "failed": sum(r["failed"] for r in results),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "servers_used": len(per_server)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, nargs="+", default=[1, 4])
    p.add_argument("--full-ms", type=float, nargs="+", default=[0.0, 20.0],
                   help="ms of other work ready in every turn of the server's loop")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="2 s per row")
    args = p.parse_args()
    if args.quick:
        args.seconds = 2.0
    rows = []
    print(f"{'servers':>7} {'full loop':>9} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'failed':>6} {'used':>4}")
    for full_ms in args.full_ms:
        for servers in args.servers:
            row = measure(servers, full_ms, args.seconds)
            rows.append(row)
            print(f"{servers:>7} {full_ms:>7.0f}ms {row['calls_per_s']:>8} {row['p50_ms']:>8} "
                  f"{row['p99_ms']:>8} {row['failed']:>6} {row['servers_used']:>4}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "grpc_accept",
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]},
        "grpcio": grpc.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
