"""Baseline for the encrypted-overlay benchmark (issue 8): iperf3 through a bare wireguard-go
tunnel between two network namespaces, against iperf3 between their underlay addresses.

"Bare" means no Shoal: wireguard-go, `wg` and `ip` set up by hand, no VXLAN, no bridge. The
encrypted-overlay figure (iperf3 between two tasks on different lab hosts) is divided by
`bare_tunnel_bps` measured between the same two lab hosts' namespaces; `bare_tunnel_bps` makes
its own interface (`shb<hex>`) and port so it runs beside a shoald that has its own tunnel.

    python bench/wg_baseline.py              # two fresh namespaces joined by a veth, 5 s each
    python bench/wg_baseline.py --seconds 10 --json bench/results/wg_baseline.json

Needs root (namespaces), wireguard-go, wg, iperf3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netdriver.node.wgkeys import new_key_pair  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "wg_baseline.json"


def in_ns(ns: str, *argv: str, check: bool = True) -> str:
    done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{ns}: {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def iperf3_bps(server_ns: str, client_ns: str, addr: str, seconds: float) -> float:
    """Receiver-side bits per second of one TCP stream from `client_ns` to `addr`."""
    return iperf3_between(["ip", "netns", "exec", server_ns],
                          ["ip", "netns", "exec", client_ns], addr, seconds)


def iperf3_between(server: list[str], client: list[str], addr: str, seconds: float) -> float:
    """The same, with iperf3 run under the command prefixes `server` and `client` (such as
    `ip netns exec NS` or `nsenter --net=/proc/PID/ns/net`)."""
    port = str(20000 + secrets.randbelow(20000))
    proc = subprocess.Popen([*server, "iperf3", "-s", "-1", "-B", addr, "-p", port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # until the server listens
            out = subprocess.run([*client, "iperf3", "-c", addr, "-p", port, "-t", str(seconds),
                                  "-J"], capture_output=True, text=True, check=False).stdout
            if out.strip() and "error" not in json.loads(out):
                return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 to {addr} never ran")
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def bare_tunnel(ns_a: str, addr_a: str, ns_b: str, addr_b: str) -> Iterator[tuple[str, str]]:
    """A wireguard-go tunnel between two namespaces' underlay addresses; yields the tunnel
    addresses (a, b). Everything it made goes at exit."""
    tag = secrets.token_hex(3)
    port = 52000 + secrets.randbelow(5000)
    tunnel = (f"100.126.{secrets.randbelow(250)}.1", "")
    tunnel = (tunnel[0], tunnel[0].rsplit(".", 1)[0] + ".2")
    sides = [(ns_a, addr_a, f"shb{tag}a", tunnel[0]), (ns_b, addr_b, f"shb{tag}b", tunnel[1])]
    keys = [new_key_pair(time.time_ns()) for _ in sides]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="shl-wgbench-") as tmp:
        try:
            for (ns, _, ifname, _), key in zip(sides, keys, strict=True):
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env={**os.environ, "WG_PROCESS_FOREGROUND": "1"}))
                key_file = Path(tmp) / f"{ifname}.key"
                key_file.write_text(key.private_key + "\n")
                key_file.chmod(0o600)
                _wait_socket(ifname)
                in_ns(ns, "wg", "set", ifname, "listen-port", str(port),
                      "private-key", str(key_file))
            for i, (ns, _, ifname, addr) in enumerate(sides):
                other = sides[1 - i]
                in_ns(ns, "wg", "set", ifname, "peer", keys[1 - i].public_key,
                      "endpoint", f"{other[1]}:{port}", "allowed-ips", f"{other[3]}/32")
                in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", ifname)
                in_ns(ns, "ip", "link", "set", ifname, "mtu", "1420", "up")
            yield tunnel
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)


def _wait_socket(ifname: str) -> None:
    path = Path(f"/var/run/wireguard/{ifname}.sock")
    deadline = time.monotonic() + 5
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"wireguard-go did not open {path}")
        time.sleep(0.05)


def bare_tunnel_bps(ns_a: str, addr_a: str, ns_b: str, addr_b: str, seconds: float) -> float:
    with bare_tunnel(ns_a, addr_a, ns_b, addr_b) as (_, tunnel_b):
        return iperf3_bps(ns_b, ns_a, tunnel_b, seconds)


@contextlib.contextmanager
def namespace_pair() -> Iterator[tuple[str, str, str, str]]:
    tag = secrets.token_hex(3)
    octet = 1 + secrets.randbelow(250)
    names = [f"shl-{tag}-b1", f"shl-{tag}-b2"]
    addrs = [f"198.18.{octet}.1", f"198.18.{octet}.2"]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "link", "add", f"shl{tag}a", "netns", names[0], "type", "veth",
                        "peer", "name", f"shl{tag}b", "netns", names[1]], check=True)
        for name, addr, dev in zip(names, addrs, [f"shl{tag}a", f"shl{tag}b"], strict=True):
            in_ns(name, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            in_ns(name, "ip", "link", "set", dev, "up")
            in_ns(name, "ip", "link", "set", "lo", "up")
        yield names[0], addrs[0], names[1], addrs[1]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    with namespace_pair() as (ns_a, addr_a, ns_b, addr_b):
        underlay = iperf3_bps(ns_b, ns_a, addr_b, args.seconds)
        tunnel = bare_tunnel_bps(ns_a, addr_a, ns_b, addr_b, args.seconds)
    result = {"underlay_gbps": underlay / 1e9, "bare_wireguard_go_gbps": tunnel / 1e9,
              "ratio": tunnel / underlay, "seconds": args.seconds}
    print(f"underlay         {underlay / 1e9:8.2f} Gbit/s")
    print(f"bare wireguard-go {tunnel / 1e9:7.2f} Gbit/s  ({tunnel / underlay:.2f} of underlay)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
