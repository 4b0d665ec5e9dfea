"""What one gRPC call costs a grpc.aio server on this machine (issue 11): the floor under the
leader's per-heartbeat cost, and why the heartbeat period stretches in a large swarm
(manager/dispatcher/dispatcher.py, MAX_HEARTBEATS_PER_S).

A bare `grpc.aio` server on loopback (no TLS, an empty handler echoing 20 bytes) in its own
process; a client process calls it --rate times a second for --seconds, as unary calls and
then as messages on one bidirectional stream. The server's CPU (its own process time,
measured inside it) over the calls made gives CPU per call. Also the server's CPU with 300
connections open and no call (what open sessions cost by themselves).

    .venv/bin/python bench/grpc_call_cost.py                # 60 calls/s, 20 s each
    .venv/bin/python bench/grpc_call_cost.py --quick        # 3 s each

Prints a table and writes bench/results/grpc_call_cost.json (or --json PATH). Loopback only;
both processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "grpc_call_cost.json"
PAYLOAD = b"x" * 20


# ---- the server: its CPU between two "mark" lines on stdin ---------------------------------

async def serve(port: int) -> None:
    import grpc

    async def echo_stream(requests: Any, _context: Any) -> Any:
        async for message in requests:
            yield message

    async def echo(request: bytes, _context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
        "Stream": grpc.stream_stream_rpc_method_handler(echo_stream),
        "Unary": grpc.unary_unary_rpc_method_handler(echo)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while True:  # each line in: answer with the CPU seconds used so far
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        print(time.process_time(), flush=True)
    await server.stop(None)


# ---- the client: calls at a fixed rate, or connections held open ---------------------------

async def call(port: int, kind: str, rate: float, seconds: float, conns: int) -> int:
    import grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(conns, 1))]
    try:
        for channel in channels:
            await channel.channel_ready()
        if kind == "idle":
            await asyncio.sleep(seconds)
            return 0
        channel = channels[0]
        done, period = 0, 1.0 / rate
        end = time.monotonic() + seconds
        if kind == "unary":
            unary = channel.unary_unary("/bench.Echo/Unary")
            while time.monotonic() < end:
                await unary(PAYLOAD)
                done += 1
                await asyncio.sleep(period)
        else:
            stream = channel.stream_stream("/bench.Echo/Stream")()
            while time.monotonic() < end:
                await stream.write(PAYLOAD)
                await stream.read()
                done += 1
                await asyncio.sleep(period)
            await stream.done_writing()
        return done
    finally:
        for channel in channels:
            await channel.close()


# ---- the driver --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_cpu(server: subprocess.Popen[str]) -> float:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("mark\n")
    server.stdin.flush()
    return float(server.stdout.readline())


def measure(port: int, server: subprocess.Popen[str], kind: str, rate: float, seconds: float,
            conns: int = 1) -> dict[str, Any]:
    before = server_cpu(server)
    out = subprocess.run([sys.executable, __file__, "--client", kind, str(port), str(rate),
                          str(seconds), str(conns)], capture_output=True, text=True, check=True)
    cpu_s = server_cpu(server) - before
    calls = int(out.stdout.strip())
    return {"kind": kind, "calls": calls, "seconds": seconds, "connections": conns,
            "server_cpu_s": round(cpu_s, 4),
            "server_cpu_pct": round(100 * cpu_s / seconds, 2),
            "server_cpu_ms_per_call": round(1000 * cpu_s / calls, 3) if calls else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=60.0, help="calls per second")
    p.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    p.add_argument("--idle-connections", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="3 s per measurement")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--server", type=int, help=argparse.SUPPRESS)
    p.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.server:
        asyncio.run(serve(args.server))
        return 0
    if args.client:
        kind, port, rate, seconds, conns = args.client
        print(asyncio.run(call(int(port), kind, float(rate), float(seconds), int(conns))))
        return 0
    if args.quick:
        args.seconds = 3.0
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--server", str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the gRPC server did not start")
        rows = [measure(port, server, "unary", args.rate, args.seconds),
                measure(port, server, "stream", args.rate, args.seconds),
                measure(port, server, "idle", 0, args.seconds, args.idle_connections)]
    finally:
        server.kill()
        server.wait()
    print(f"{'calls':<40}{'server CPU %':>14}{'ms per call':>14}")
    for row in rows:
        what = (f"{row['calls']} {row['kind']} calls in {row['seconds']:.0f} s"
                if row["kind"] != "idle" else
                f"{row['connections']} connections, no call")
        per = row["server_cpu_ms_per_call"]
        print(f"{what:<40}{row['server_cpu_pct']:>14.2f}{per if per is not None else '':>14}")
    out = {"benchmark": "grpc_call_cost", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "loadavg_1m": os.getloadavg()[0]},
           "grpcio": __import__("grpc").__version__, "rate": args.rate, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
