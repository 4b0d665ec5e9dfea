"""Sandbox resolver latency: N sequential queries from inside a namespace to 127.0.0.11.

A fresh namespace `shl-<rand>-bench` (only `lo`), a `Resolver` on this process's event loop
attached to it with records of S services of T tasks each (the names asked cycle through a
service VIP name, `tasks.<service>`, a dnsrr service and a task name, so every answer is
local: no forwarding is measured). The client is a separate process started inside the
namespace (`nsenter --net=...`): a plain UDP socket (and a TCP connection, reused) sending
prebuilt queries one after the other, timing each from send to the full answer, checking
its id, rcode and record count. 200 warm-up queries are not counted.

    sudo .venv/bin/python bench/resolver_latency.py [-n 2000] [--services 50] [--tasks 10]
                                                    [--json PATH]

Needs root (a network namespace). Prints p50/p99/max per transport, what one records
update (`set_networks`) costs the node's loop, and the goal (p99 <= 1 ms over UDP); exits 1
when the goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

from netdriver.node import netns  # noqa: E402
from netdriver.node.resolver import Resolver  # noqa: E402
from proto import cluster_pb2  # noqa: E402
from proto import objects_pb2 as pb  # noqa: E402

GOAL_P99_MS = 1.0
WARMUP = 200


def records(services: int, tasks: int) -> list[cluster_pb2.NetworkState]:
    net = pb.Network(id="net-bench", spec=pb.NetworkSpec(
        annotations=pb.Annotations(name="bench"), driver="overlay"))
    state = cluster_pb2.NetworkState(network=net)
    for s in range(services):
        dnsrr = s % 2 == 1
        svc = state.services.add(
            service_id=f"s{s}", name=f"svc{s}", aliases=[f"alias{s}"],
            mode=pb.EndpointSpec.DNSRR if dnsrr else pb.EndpointSpec.VIP,
            vip="" if dnsrr else f"10.1.{s}.2/16")
        for t in range(tasks):
            svc.tasks.add(task_id=f"t{s}-{t}", node_id="n1", addr=f"10.1.{s}.{10 + t}/16",
                          name=f"svc{s}.{t + 1}.x{s}y{t}")
    return [state]


def questions(services: int, tasks: int) -> list[tuple[str, int]]:
    """Names to ask in turn, with how many A records each must get."""
    out: list[tuple[str, int]] = []
    for s in range(services):
        out += [(f"svc{s}" if s % 2 == 0 else f"alias{s}", 1 if s % 2 == 0 else tasks),
                (f"tasks.svc{s}", tasks), (f"svc{s}.1.x{s}y0", 1)]
    return out


# --- the client (runs in its own process, inside the namespace) --------------------------

def client(n: int, services: int, tasks: int) -> dict[str, list[float]]:
    return query_loop(questions(services, tasks), n)


def query_loop(asked: list[tuple[str, int]], n: int) -> dict[str, list[float]]:
    """Per transport (udp, tcp), the milliseconds of `n` sequential queries to 127.0.0.11
    cycling through `asked` (name, A records it must get), after WARMUP uncounted ones."""
    wires = [(dns.message.make_query(name, "A"), count) for name, count in asked]
    result: dict[str, list[float]] = {}
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.11", 53))
    udp.settimeout(2)
    tcp: socket.socket | None = None
    for transport in ("udp", "tcp"):
        times: list[float] = []
        if transport == "tcp":
            # Connected only now: the resolver closes a connection idle for TCP_IDLE (10 s),
            # which a long UDP run on a loaded machine exceeds.
            tcp = socket.create_connection(("127.0.0.11", 53), timeout=2)
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(WARMUP + n):
            query, count = wires[i % len(wires)]
            query.id = i & 0xFFFF
            wire = query.to_wire()
            start = time.perf_counter_ns()
            if transport == "udp":
                udp.send(wire)
                reply = udp.recv(65535)
            else:
                assert tcp is not None
                tcp.sendall(struct.pack("!H", len(wire)) + wire)
                reply = _recv_tcp(tcp)
            took = time.perf_counter_ns() - start
            response = dns.message.from_wire(reply)
            got = sum(len(rrset) for rrset in response.answer)
            if response.id != query.id or response.rcode() != dns.rcode.NOERROR or got != count:
                raise SystemExit(f"bad answer for {query.question[0].name}: {response}")
            if i >= WARMUP:
                times.append(took / 1e6)
        result[transport] = times
    return result


def _recv_tcp(sock: socket.socket) -> bytes:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("resolver closed the connection")
            data += chunk
        return data
    return exactly(struct.unpack("!H", exactly(2))[0])


# --- the driver ---------------------------------------------------------------------------

def update_cost_ms(services: int, tasks: int, repeat: int = 5) -> float:
    """Median time of `set_networks` (runs on the node's loop at every assignments update)."""
    networks = records(services, tasks)
    resolver = Resolver([])
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        resolver.set_networks(networks)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def measure(name: str, args: argparse.Namespace) -> dict[str, list[float]]:
    resolver = Resolver([])
    resolver.set_networks(records(args.services, args.tasks))
    path = netns.named_netns_path(name)
    try:
        await resolver.attach("bench", path, [pb.NetworkAttachment(network_id="net-bench")])
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={path}", sys.executable, str(Path(__file__).resolve()),
            "--client", "-n", str(args.n), "--services", str(args.services),
            "--tasks", str(args.tasks), stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"client failed ({proc.returncode})")
        result: dict[str, list[float]] = json.loads(out)
        return result
    finally:
        await resolver.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args.n, args.services, args.tasks)))
        return 0

    name = f"shl-{secrets.token_hex(3)}-bench"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        result = asyncio.run(measure(name, args))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)

    summary: dict[str, object] = {"n": args.n, "services": args.services,
                                  "tasks": args.tasks, "python": platform.python_version()}
    print(f"resolver latency, {args.n} sequential queries per transport "
          f"({args.services} services x {args.tasks} tasks)")
    print(f"{'transport':<10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'mean ms':>10}")
    for transport, times in result.items():
        row = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
               "max_ms": max(times), "mean_ms": statistics.fmean(times)}
        summary[transport] = row
        print(f"{transport:<10}" + "".join(f"{v:>10.3f}" for v in row.values()))
    for services, tasks in ((args.services, args.tasks), (100, 100)):
        cost = update_cost_ms(services, tasks)
        summary[f"set_networks_{services}x{tasks}_ms"] = cost
        print(f"set_networks, {services} services x {tasks} tasks: {cost:.1f} ms")
    p99 = percentile(result["udp"], 99)
    met = p99 <= GOAL_P99_MS
    summary["goal_met"] = met
    print(f"goal p99 <= {GOAL_P99_MS:g} ms (udp): {'met' if met else 'MISSED'} "
          f"(p99 {p99:.3f} ms)")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
