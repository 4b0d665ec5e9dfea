"""Issue 8, items 6 and 7: encrypted overlays and MTU, on a lab of one manager and one worker.

- A payload marker sent between tasks on different hosts is seen in clear on the lab
  underlay for a plain network and never for an `--opt encrypted` one, whose traffic is
  WireGuard UDP instead.
- An open TCP connection over an encrypted network survives WireGuard key rotations (every
  line arrives, in order) while `node inspect` shows the keys changing.
- A node whose tunnel can't come up says so in `node inspect` and `network doctor`, and its
  encrypted traffic is dropped, never sent in clear.
- A 10 MiB transfer across hosts succeeds on both kinds of network; the task's interface MTU
  is the underlay's minus 50 (VXLAN) or minus 110 (VXLAN inside WireGuard over IPv4).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shoal.client import Client
from shoal.lab import HostState, LabState
from shoal.lab_state import shoald
from tests.system.conftest import wait_until
from tests.system.helpers import shoal
from tests.system.overlay import (
    IMAGE,
    SERVE,
    exec_in_task,
    http_get,
    in_host,
    task_addr,
    wait_running,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]

WG_PORT = 51820
VXLAN_PORT = 4789
BIG = 10 * 1024 * 1024
# Prints its address, makes a 10 MiB file of random bytes, serves /www on 8080.
SERVE_BIG = ["sh", "-c", "ip -4 -o addr show dev eth0; mkdir -p /www; hostname > /www/hostname;"
             " dd if=/dev/urandom of=/www/big bs=1M count=10 2>/dev/null;"
             " exec httpd -f -p 8080 -h /www"]
# The lab's own shoald command line (lab.py `_host_state`) plus a key rotation every 5 s.
ROTATING = [shoald(), "--data-root", "{data_root}", "--host", "unix://{socket}",
            "--hostname", "{hostname}", "--engine", "{engine}", "--netns-prefix",
            "{netns_prefix}", "--key-rotation", "5"]


# --- helpers ---------------------------------------------------------------------------

@contextmanager
def capture(host: HostState, path: Path) -> Iterator[None]:
    """tcpdump on the host's underlay interface (lab0) into `path` while the block runs."""
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{host.namespace}", "tcpdump", "-i", "lab0", "-n",
         "--immediate-mode", "-U", "-s", "0", "-w", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on lab0, ...": capturing from here on
        assert "listening on lab0" in line, line
        yield
    finally:
        time.sleep(1)  # the block's last packets reach the file (-U writes each at once)
        proc.terminate()
        proc.wait(10)


def count_packets(path: Path, expr: str) -> int:
    out = subprocess.run(["tcpdump", "-r", str(path), "-n", expr], capture_output=True,
                         text=True, check=True).stdout
    return len(out.splitlines())


def create_network(m1: HostState, name: str, *opts: str) -> None:
    out = shoal(m1, "network", "create", "-d", "overlay", *opts, name)
    assert out.returncode == 0, out.stderr


def create_global(m1: HostState, name: str, network: str, args: list[str]) -> None:
    out = shoal(m1, "service", "create", "-d", "--name", name, "--mode", "global",
                "--network", network, IMAGE, *args)
    assert out.returncode == 0, out.stderr


def by_host(client: Client, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """hostname → the task running there."""
    names = {n["ID"]: n["Description"]["Hostname"] for n in client.get("/nodes")}
    return {names[t["NodeID"]]: t for t in tasks}


def tunnels(client: Client) -> dict[str, dict[str, Any]]:
    """hostname → the node's Tunnel as `node inspect` shows it."""
    return {n["Description"]["Hostname"]: n.get("Tunnel") or {} for n in client.get("/nodes")}


def hostname(lab: LabState, task: dict[str, Any]) -> str:
    code, out = exec_in_task(lab, task, "hostname")
    assert code == 0, out
    return out.strip()


def mtu(lab: LabState, task: dict[str, Any]) -> int:
    code, out = exec_in_task(lab, task, "cat", "/sys/class/net/eth0/mtu")
    assert code == 0, out
    return int(out)


def underlay_mtu(host: HostState) -> int:
    # /sys is the machine's under nsenter --net: ask the namespace's kernel through ip.
    fields = in_host(host, "ip", "-o", "link", "show", "dev", "lab0").split()
    return int(fields[fields.index("mtu") + 1])


def reach(lab: LabState, client_task: dict[str, Any], server: dict[str, Any],
          network: str, timeout: float = 60) -> str:
    url = f"http://{task_addr(server, network)}:8080/hostname"
    return wait_until(lambda: http_get(lab, client_task, url), timeout, f"GET {url}")


def fetch_big(lab: LabState, client_task: dict[str, Any], server: dict[str, Any],
              network: str) -> tuple[int, str]:
    """(size, md5) of /www/big fetched from `server` over `network`."""
    url = f"http://{task_addr(server, network)}:8080/big"
    code, out = exec_in_task(lab, client_task, "sh", "-c",
                             f"wget -O /tmp/big {url} 2>/dev/null && wc -c < /tmp/big && "
                             "md5sum /tmp/big; rm -f /tmp/big", timeout=120)
    assert code == 0, (url, out)
    size, digest = out.split()[:2]
    return int(size), digest


def md5_of(lab: LabState, task: dict[str, Any], path: str) -> str:
    code, out = exec_in_task(lab, task, "md5sum", path)
    assert code == 0, out
    return out.split()[0]


def retransmitted(lab: LabState, task: dict[str, Any]) -> int:
    """TCP segments the task's namespace has retransmitted (/proc/net/snmp RetransSegs)."""
    code, out = exec_in_task(lab, task, "cat", "/proc/net/snmp")
    assert code == 0, out
    names, values = [line.split() for line in out.splitlines() if line.startswith("Tcp:")]
    return int(values[names.index("RetransSegs")])


def netns_inode(host: HostState) -> int:
    return os.stat(f"/run/netns/{host.namespace}").st_ino


def wireguard_go_pid(host: HostState) -> int:
    """The wireguard-go serving the host: found by its network namespace, not by name."""
    inode = netns_inode(host)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            same_ns = os.stat(f"/proc/{entry}/ns/net").st_ino == inode
        except OSError:
            continue
        if comm == "wireguard-go" and same_ns:
            return int(entry)
    raise AssertionError(f"no wireguard-go in {host.namespace}")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pid_gone(pid), 10, f"process {pid} to exit")


HOLD_PORT = ("import socket, sys, time\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "s.bind(('0.0.0.0', int(sys.argv[1])))\n"
             "print('bound', flush=True)\n"
             "time.sleep(600)\n")


def hold_udp_port(host: HostState, port: int) -> subprocess.Popen[str] | None:
    """A process holding UDP `port` in the host's namespace (None: the port was taken)."""
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.namespace}", sys.executable,
                             "-c", HOLD_PORT, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() == "bound":
        return proc
    proc.wait(10)
    return None


# --- tests -----------------------------------------------------------------------------

@pytest.mark.lab(managers=1, workers=1)
def test_encrypted_network_hides_payload_and_both_carry_10mib(lab: LabState,
                                                              tmp_path: Path) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    create_network(m1, "plain")
    create_network(m1, "secret", "--opt", "encrypted")
    plain, secret = (client.get(f"/networks/{n}")["Id"] for n in ("plain", "secret"))
    create_global(m1, "p", "plain", SERVE_BIG)
    create_global(m1, "s", "secret", SERVE_BIG)
    p = by_host(client, wait_running(client, "p", 2))
    s = by_host(client, wait_running(client, "s", 2))
    assert set(p) == set(s) == {"m1", "w1"}
    # Both directions work before anything is measured (the tunnel needs a handshake).
    for tasks, net in ((p, plain), (s, secret)):
        assert reach(lab, tasks["m1"], tasks["w1"], net) == hostname(lab, tasks["w1"])
        assert reach(lab, tasks["w1"], tasks["m1"], net) == hostname(lab, tasks["m1"])

    # MTU: underlay − 50 on the plain network, underlay − 110 on the encrypted one (WireGuard
    # over the lab's IPv4 underlay adds 60).
    underlay = underlay_mtu(m1)
    assert underlay == underlay_mtu(lab.host("w1"))
    print(f"underlay mtu {underlay}: task mtu plain {mtu(lab, p['m1'])}, "
          f"encrypted {mtu(lab, s['m1'])}")
    for host in ("m1", "w1"):
        assert mtu(lab, p[host]) == underlay - 50, (host, underlay)
        assert mtu(lab, s[host]) == underlay - 110, (host, underlay)

    # The marker in the request line, m1's task → w1's task, captured on m1's underlay: one
    # capture per network, so each one's packets are told apart.
    seen = {}
    for name, tasks, net in (("plain", p, plain), ("secret", s, secret)):
        marker = name + secrets.token_hex(8)
        pcap = tmp_path / f"{name}.pcap"
        url = f"http://{task_addr(tasks['w1'], net)}:8080/hostname?{marker}"
        with capture(m1, pcap):
            assert http_get(lab, tasks["m1"], url) == hostname(lab, tasks["w1"]), url
        seen[name] = (marker.encode() in pcap.read_bytes(),
                      count_packets(pcap, f"udp port {VXLAN_PORT}"),
                      count_packets(pcap, f"udp port {WG_PORT}"))
        print(f"{name}: marker in capture {seen[name][0]}, {seen[name][1]} VXLAN packets, "
              f"{seen[name][2]} WireGuard packets on m1 lab0")
    plain_marker, plain_vxlan, _ = seen["plain"]
    secret_marker, secret_vxlan, secret_wireguard = seen["secret"]
    assert plain_marker and plain_vxlan > 0
    # The encrypted network's VXLAN travels inside WireGuard: none of it on the wire.
    assert not secret_marker and secret_vxlan == 0 and secret_wireguard > 0

    # 10 MiB across hosts, both ways, on each network; the bytes are the server's.
    for tasks, net in ((p, plain), (s, secret)):
        for src, dst in (("m1", "w1"), ("w1", "m1")):
            began = time.monotonic()
            size, digest = fetch_big(lab, tasks[src], tasks[dst], net)
            print(f"10 MiB {src} <- {dst} on {'secret' if net == secret else 'plain'}: "
                  f"{size} bytes in {time.monotonic() - began:.1f} s")
            assert size == BIG
            assert digest == md5_of(lab, tasks[dst], "/www/big")

    out = wait_until(lambda: (r := shoal(m1, "network", "doctor", "secret")).returncode == 0
                     and r, 60, "network doctor to find nothing wrong on secret")
    assert out.stdout.count("\nnode ") == 2, out.stdout


@pytest.mark.lab(managers=1, workers=1, daemon_argv=ROTATING)
def test_open_tcp_connection_survives_key_rotations(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    create_network(m1, "secret", "--opt", "encrypted")
    secret = client.get("/networks/secret")["Id"]
    create_global(m1, "s", "secret", SERVE)
    s = by_host(client, wait_running(client, "s", 2))
    assert reach(lab, s["m1"], s["w1"], secret) == hostname(lab, s["w1"])
    assert reach(lab, s["w1"], s["m1"], secret) == hostname(lab, s["m1"])
    server, sender = s["w1"], s["m1"]

    # One TCP connection, m1 → w1: the server's stdin never ends, so it never closes its
    # half first; it writes what arrives to /tmp/got.
    threading.Thread(target=exec_in_task, daemon=True, kwargs={"timeout": 400}, args=(
        lab, server, "sh", "-c", "sleep 400 | nc -l -p 9000 > /tmp/got")).start()
    wait_until(lambda: ":9000 " in exec_in_task(lab, server, "netstat", "-ltn")[1], 30,
               "the server to listen on 9000")
    count = 300  # one line per 100 ms: 30 s and more, about 6 rotations of 5 s
    sent: dict[str, tuple[int, str]] = {}

    def send() -> None:
        sent["result"] = exec_in_task(
            lab, sender, "sh", "-c",
            f"i=0; while [ $i -lt {count} ]; do echo line $i; i=$((i+1)); usleep 100000; done"
            f" | nc {task_addr(server, secret)} 9000", timeout=300)

    keys: dict[str, list[str]] = {"m1": [], "w1": []}
    retrans = retransmitted(lab, sender)
    began = time.monotonic()
    sender_thread = threading.Thread(target=send, daemon=True)
    sender_thread.start()
    while sender_thread.is_alive():
        for host, tunnel in tunnels(client).items():
            key = tunnel.get("PublicKey", "")
            if key and (not keys[host] or keys[host][-1] != key):
                keys[host].append(key)
        time.sleep(0.5)
    sender_thread.join()
    sent_at = time.monotonic()
    retrans = retransmitted(lab, sender) - retrans
    assert sent["result"][0] == 0, sent["result"]

    want = [f"line {i}" for i in range(count)]

    def received() -> list[str]:
        return exec_in_task(lab, server, "cat", "/tmp/got")[1].splitlines()

    got = wait_until(lambda: len(r := received()) >= count and r, 240,
                     f"{count} lines on the server")
    print(f"rotations seen while the connection was open: "
          f"m1 {len(keys['m1']) - 1}, w1 {len(keys['w1']) - 1}; {len(got)} lines received; "
          f"sender open {sent_at - began:.1f} s for {count / 10:.0f} s of lines, "
          f"{retrans} TCP segments retransmitted")
    assert got == want
    assert len(keys["m1"]) >= 3 and len(keys["w1"]) >= 3, keys


@pytest.mark.lab(managers=1, workers=1)
def test_tunnel_down_is_reported_and_never_falls_back_to_clear_text(lab: LabState,
                                                                     tmp_path: Path) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    client = m1.client()
    create_network(m1, "secret", "--opt", "encrypted")
    secret = client.get("/networks/secret")["Id"]
    create_global(m1, "s", "secret", SERVE)
    s = by_host(client, wait_running(client, "s", 2))
    assert reach(lab, s["m1"], s["w1"], secret) == hostname(lab, s["w1"])
    assert reach(lab, s["w1"], s["m1"], secret) == hostname(lab, s["m1"])
    assert not tunnels(client)["w1"].get("Error")

    # w1's wireguard-go dies and its UDP port is taken before shoald can start another.
    holder = None
    try:
        for _ in range(3):
            kill_and_wait(wireguard_go_pid(w1))
            holder = hold_udp_port(w1, WG_PORT)
            if holder is not None:
                break
        assert holder is not None, "shoald restarted wireguard-go before the port was taken"

        tunnel = wait_until(lambda: (t := tunnels(client)["w1"]).get("Error") and t, 60,
                            "node inspect to show w1's tunnel error")
        # The CLI shows it too (the reason may have moved on: a restart that failed).
        out = shoal(m1, "node", "inspect", "w1")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["Tunnel"]["Error"], out.stdout
        doctor = wait_until(
            lambda: (r := shoal(m1, "network", "doctor", "secret")).returncode != 0
            and "tunnel down" in r.stdout and r, 60, "network doctor to report the tunnel")
        print(f"w1 tunnel error: {tunnel['Error']!r}\ndoctor:\n{doctor.stdout}")

        # It stays down and says so through shoald's next rounds (each tries to start a
        # new wireguard-go, which can't have its port).
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            assert tunnels(client)["w1"].get("Error"), "w1's tunnel error cleared while down"
            time.sleep(1)
        print(f"w1 tunnel error after 25 s: {tunnels(client)['w1']['Error']!r}")

        # Both ways, while it is down: no answer, and no marker on either underlay.
        marker = "secret" + secrets.token_hex(8)
        pcaps = {"m1": tmp_path / "m1.pcap", "w1": tmp_path / "w1.pcap"}
        with capture(m1, pcaps["m1"]), capture(w1, pcaps["w1"]):
            for src, dst in (("m1", "w1"), ("w1", "m1")):
                url = f"http://{task_addr(s[dst], secret)}:8080/hostname?{marker}"
                assert http_get(lab, s[src], url, timeout=4) is None, url
        assert tunnels(client)["w1"].get("Error"), "the tunnel came back during the capture"
        for host, pcap in pcaps.items():
            assert marker.encode() not in pcap.read_bytes(), host
            print(f"{host} lab0 while down: {count_packets(pcap, f'udp port {VXLAN_PORT}')} "
                  f"VXLAN, {count_packets(pcap, f'udp port {WG_PORT}')} WireGuard packets")
    finally:
        if holder is not None:
            holder.terminate()
            holder.wait(10)

    # Once the port is free the node brings its tunnel back by itself.
    wait_until(lambda: not tunnels(client)["w1"].get("Error"), 60, "w1's tunnel error to clear")
    assert reach(lab, s["m1"], s["w1"], secret) == hostname(lab, s["w1"])
    assert reach(lab, s["w1"], s["m1"], secret) == hostname(lab, s["m1"])
