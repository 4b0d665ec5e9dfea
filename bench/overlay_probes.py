"""The overlay benchmark's probes (bench/overlay_bench.py): small loops run as this script
inside a task's network namespace (`nsenter --net=/proc/PID/ns/net python overlay_probes.py
KIND JSON`), which print "ready" once watching and their result as JSON on the last line;
and the benchmark's side that starts them and reads them.

  vip-new      loop HTTP GETs on a VIP until a hostname not yet known answers
  gone         watch `tasks.<service>` and the VIP's nftables backends until one left
  dns-latency  the query loop of bench/resolver_latency.py at 127.0.0.11
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rdatatype  # noqa: E402

from bench.resolver_latency import query_loop  # noqa: E402
from bench.waiting import BenchError  # noqa: E402
from netdriver.node.nft import listed_backends  # noqa: E402

PORT = 8080  # the tasks' httpd (overlay_lab.SERVE)
PROBE_TIMEOUT = 60.0  # seconds a probe waits for what it watches
POLL = 0.01


def nsenter_pid(pid: int) -> list[str]:
    return ["nsenter", f"--net=/proc/{pid}/ns/net"]


# ---- run inside a task's network namespace ------------------------------------------------

def probe_vip_new(vip: str, known: list[str]) -> dict[str, Any]:
    """Loop GET http://VIP/hostname; "ready" after the first answer; returns when a hostname
    not in `known` answers."""
    requests = failures = 0
    ready = False
    deadline = time.monotonic() + PROBE_TIMEOUT
    while time.monotonic() < deadline:
        requests += 1
        name = http_hostname(vip)
        if name is None:
            failures += 1
            time.sleep(POLL)
            continue
        if not ready:
            print("ready", flush=True)
            ready = True
        if name not in known:
            return {"t": time.monotonic(), "name": name, "requests": requests,
                    "failures": failures}
    raise SystemExit(f"no new hostname through {vip} in {PROBE_TIMEOUT:.0f} s "
                     f"({requests} requests, {failures} failed)")


def http_hostname(vip: str) -> str | None:
    conn = http.client.HTTPConnection(vip, PORT, timeout=1.0)
    try:
        conn.request("GET", "/hostname")
        reply = conn.getresponse()
        return reply.read().decode().strip() if reply.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def probe_gone(service: str, vip: str, expected: int) -> dict[str, Any]:
    """Watch `tasks.<service>` (this sandbox's resolver) and the VIP's backends (this
    sandbox's nftables); "ready" after the first look; returns when each has `expected`
    addresses (the time of the first such look, and which addresses left)."""
    first = {"dns": dns_addrs(service), "nft": nft_backends(vip)}
    print("ready", flush=True)
    done: dict[str, Any] = {}
    deadline = time.monotonic() + PROBE_TIMEOUT
    while len(done) < 2 and time.monotonic() < deadline:
        for kind, look in (("dns", lambda: dns_addrs(service)), ("nft", lambda: nft_backends(vip))):
            if kind in done:
                continue
            now = look()
            if len(now) == expected:
                done[kind] = {"t": time.monotonic(), "gone": sorted(first[kind] - now),
                              "first": sorted(first[kind])}
        time.sleep(POLL)
    if len(done) < 2:
        raise SystemExit(f"still {first} (expected {expected}) after {PROBE_TIMEOUT:.0f} s")
    return done


def dns_addrs(service: str) -> set[str]:
    query = dns.message.make_query(f"tasks.{service}", "A")
    try:
        reply = dns.query.udp(query, "127.0.0.11", timeout=0.5)
    except (OSError, dns.exception.Timeout):
        return set()
    return {r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A
            for r in rrset}


def nft_backends(vip: str) -> set[str]:
    done = subprocess.run(["nft", "list", "table", "ip", "shoal"], capture_output=True,
                          text=True, check=False)
    return set(listed_backends(done.stdout).get(vip, []))


def probe_main(kind: str, arg: dict[str, Any]) -> int:
    if kind == "vip-new":
        result = probe_vip_new(arg["vip"], arg["known"])
    elif kind == "gone":
        result = probe_gone(arg["service"], arg["vip"], arg["expected"])
    elif kind == "dns-latency":
        result = query_loop([tuple(q) for q in arg["asked"]], arg["n"])
    else:
        raise SystemExit(f"unknown probe {kind}")
    print(json.dumps(result), flush=True)
    return 0


# ---- the benchmark's side --------------------------------------------------------------

def run_probe(pid: int, kind: str, arg: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([*nsenter_pid(pid), sys.executable, str(Path(__file__).resolve()),
                             kind, json.dumps(arg)],
                            stdout=subprocess.PIPE, text=True)


def probe_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise BenchError(f"probe did not get ready: {line!r}")


def probe_result(proc: subprocess.Popen[str]) -> Any:
    out, _ = proc.communicate(timeout=PROBE_TIMEOUT + 30)
    if proc.returncode != 0:
        raise BenchError(f"probe failed ({proc.returncode}): {out}")
    return json.loads(out.strip().splitlines()[-1])


@contextmanager
def probing(procs: list[subprocess.Popen[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    try:
        for proc in procs:
            probe_ready(proc)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(probe_main(sys.argv[1], json.loads(sys.argv[2])))
