"""WireGuard between two lab namespaces with real wireguard-go.

Each test gets namespaces `shl-<hex>-w1` and `shl-<hex>-w2` joined by a veth with 198.18.R.1
and .2; a `WireGuard` object per namespace is synced with the other as its peer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netdriver.node import netns
from netdriver.node.wgstate import interface_name, parse_dump
from netdriver.node.wireguard import WireGuard
from proto import cluster_pb2

pytestmark = [pytest.mark.system]

PORT = 51820


@dataclass
class Side:
    name: str        # namespace name
    path: str        # /run/netns/...
    veth: str
    underlay: str    # 198.18.R.x
    tunnel: str      # 100.127.0.x
    node_id: str
    wg: WireGuard


@dataclass
class Pair:
    one: Side
    two: Side
    started: list[int] = field(default_factory=list)

    def message(self, side: Side, with_peer: bool = True) -> cluster_pb2.AssignmentsMessage:
        other = self.two if side is self.one else self.one
        peers = [cluster_pb2.NetworkPeer(node_id=other.node_id, addr=other.underlay,
                                         tunnel_addr=other.tunnel,
                                         public_key=other.wg.public_key)] if with_peer else []
        return cluster_pb2.AssignmentsMessage(peers=peers)

    async def sync(self, side: Side, with_peer: bool = True) -> None:
        await side.wg.sync(self.message(side, with_peer), side.tunnel)


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


async def in_ns(side: Side, *argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, ["nsenter", f"--net={side.path}", *argv], capture_output=True,
        text=True, check=False)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo(addr: str, payload: bytes, count: int, timeout: float) -> bool:
    """ICMP echo over a raw socket (the machine has no ping binary); True if every request
    got its reply. The payload is ours, so a capture can look for it."""
    ident = secrets.randbelow(0xFFFF)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for seq in range(count):
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq) + payload
            try:
                sock.sendto(packet, (addr, 0))
            except OSError:  # EINVAL from a blackhole route, EHOSTUNREACH, ...
                return False
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                sock.settimeout(left)
                try:
                    data, _ = sock.recvfrom(65535)
                except TimeoutError:
                    return False
                icmp = data[(data[0] & 0x0F) * 4:]
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if kind == 0 and rid == ident and rseq == seq and icmp[8:] == payload:
                    break
            time.sleep(0.2)
    return True


async def ping(side: Side, addr: str, count: int = 3, marker: bytes = b"") -> bool:
    payload = (marker or b"shoal-wg-test") * 4
    return await netns.run_in_netns(side.path, lambda: _echo(addr, payload, count, 1.0))


async def wait_ping(side: Side, addr: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await ping(side, addr, count=1):
        assert time.monotonic() < deadline, f"no ping {side.name} -> {addr} in {timeout} s"


async def dump(side: Side) -> str:
    return (await netns.nsenter(side.path, "wg", "show", side.wg.ifname, "dump"))


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    tag = secrets.token_hex(3)
    octet = 1 + secrets.randbelow(250)
    names = [f"shl-{tag}-w1", f"shl-{tag}-w2"]
    veths = [f"shl{tag}a", f"shl{tag}b"]
    sides: list[Side] = []
    try:
        for name in names:
            ip("netns", "add", name)
        ip("link", "add", veths[0], "netns", names[0], "type", "veth",
           "peer", "name", veths[1], "netns", names[1])
        for i, (name, veth) in enumerate(zip(names, veths, strict=True)):
            ip("-n", name, "addr", "add", f"198.18.{octet}.{i + 1}/24", "dev", veth)
            ip("-n", name, "link", "set", veth, "up")
            ip("-n", name, "link", "set", "lo", "up")
            node_id = secrets.token_hex(6)
            wg = WireGuard(node_id, tmp_path / name, host_netns=netns.named_netns_path(name),
                           listen_port=PORT)
            sides.append(Side(name, netns.named_netns_path(name), veth,
                              f"198.18.{octet}.{i + 1}", f"100.127.0.{i + 1}", node_id, wg))
        yield Pair(sides[0], sides[1])
    finally:
        for side in sides:
            pid = side.wg.pid
            await side.wg.close()
            if pid is not None and Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)  # only if close() failed to stop it
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


async def test_ping_across_tunnel_and_interface_state(pair: Pair) -> None:
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    assert pair.one.wg.error == "" and pair.two.wg.error == ""
    await wait_ping(pair.one, pair.two.tunnel)
    iface, peers = parse_dump(await dump(pair.one))
    assert iface.public_key == pair.one.wg.public_key and iface.listen_port == PORT
    assert set(peers) == {pair.two.wg.public_key}
    peer = peers[pair.two.wg.public_key]
    assert peer.config.endpoint == f"{pair.two.underlay}:{PORT}"
    assert peer.config.allowed_ips == {f"{pair.two.tunnel}/32"}
    assert peer.config.keepalive == 5
    assert peer.last_handshake_ns > 0
    addr = (await in_ns(pair.one, "ip", "-4", "-o", "addr", "show", "dev",
                        pair.one.wg.ifname)).stdout
    assert f"{pair.one.tunnel}/16" in addr
    link = (await in_ns(pair.one, "ip", "-o", "link", "show", "dev", pair.one.wg.ifname)).stdout
    assert "mtu 1440" in link and "UP" in link  # veth 1500 - 60 (IPv4 peers)
    # wireguard-go's received packets are steered to every CPU (this namespace's sysfs).
    if pair.one.wg.pid is not None and len(os.sched_getaffinity(0)) > 1:
        rps = (await in_ns(pair.one, "unshare", "--mount", "--propagation", "private", "sh",
                           "-c", "mount -t sysfs sysfs /sys && cat /sys/class/net/"
                           f"{pair.one.wg.ifname}/queues/rx-0/rps_cpus")).stdout
        assert int(rps.replace(",", ""), 16) == sum(1 << c for c in os.sched_getaffinity(0))
    status = await pair.one.wg.peer_status()
    assert [(k, e) for k, e, _ in status] == [(pair.two.wg.public_key,
                                               f"{pair.two.underlay}:{PORT}")]
    # A second sync with the same message changes nothing (read back, nothing to apply).
    await pair.sync(pair.one)
    _, again = parse_dump(await dump(pair.one))
    assert {k: p.config for k, p in again.items()} == {k: p.config for k, p in peers.items()}


async def tcpdump_during(side: Side, pcap: Path,
                         work: Callable[[], Awaitable[bool]]) -> bytes:
    """The bytes tcpdump captured on the side's underlay veth while `work()` ran."""
    proc = await asyncio.create_subprocess_exec(
        # --immediate-mode: packets still in the capture ring at SIGTERM would be lost
        "nsenter", f"--net={side.path}", "tcpdump", "--immediate-mode", "-i", side.veth,
        "-n", "-U", "-w", str(pcap), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert b"listening on" in line, line
        assert await work()
        await asyncio.sleep(0.3)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    return pcap.read_bytes()


def pcap_lines(pcap: Path) -> list[str]:
    done = subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-nn"], capture_output=True,
                          text=True, check=True)
    return [line for line in done.stdout.splitlines() if line.strip()]


async def test_underlay_sees_only_encrypted_udp(pair: Pair, tmp_path: Path) -> None:
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    await wait_ping(pair.one, pair.two.tunnel)
    marker = b"MARKER-" + secrets.token_hex(6).encode()  # repeated through the payload
    pcap = tmp_path / "tunnel.pcap"
    data = await tcpdump_during(
        pair.one, pcap, lambda: ping(pair.one, pair.two.tunnel, count=5, marker=marker))
    assert marker not in data
    ipv4 = [line for line in pcap_lines(pcap) if " IP " in line]
    assert len(ipv4) >= 10  # 5 requests and 5 replies at least
    for line in ipv4:
        assert f".{PORT} > " in line and f".{PORT}: UDP" in line, line
    # Control: the same capture on the underlay does see the marker sent in clear.
    clear = tmp_path / "clear.pcap"
    data = await tcpdump_during(
        pair.one, clear, lambda: ping(pair.one, pair.two.underlay, count=2, marker=marker))
    assert marker in data


class LineStream:
    """A TCP client in one namespace sending a numbered line every 100 ms to a server in
    another; the server checks every line arrives, in order."""

    def __init__(self, client: Side, server: Side) -> None:
        self.client, self.server = client, server
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.sent = 0
        self.received: list[int] = []
        self.arrivals: list[float] = []
        self.listener = netns.run_in_netns_sync(server.path, self._listen)
        self.threads = [threading.Thread(target=self._serve, daemon=True),
                        threading.Thread(target=self._send, daemon=True)]

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.server.tunnel, 0))
        sock.listen(1)
        return sock

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn, conn.makefile("r") as lines:
                for line in lines:
                    self.received.append(int(line))
                    self.arrivals.append(time.monotonic())
        except BaseException as err:
            self.errors.append(err)

    def _send(self) -> None:
        port = self.listener.getsockname()[1]
        try:
            sock = netns.run_in_netns_sync(
                self.client.path, lambda: socket.create_connection((self.server.tunnel, port), 5))
            with sock:
                while not self.stop.is_set():
                    sock.sendall(f"{self.sent}\n".encode())
                    self.sent += 1
                    time.sleep(0.1)
                sock.shutdown(socket.SHUT_WR)
        except BaseException as err:
            self.errors.append(err)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        self.listener.close()


async def test_rotation_keeps_open_tcp_connection(pair: Pair) -> None:
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    await wait_ping(pair.one, pair.two.tunnel)
    stream = LineStream(pair.one, pair.two)
    stream.start()
    await asyncio.sleep(1.0)
    old_key, old_created = pair.one.wg.public_key, pair.one.wg.key_created_ns
    new_key = await pair.one.wg.rotate()
    assert new_key != old_key and pair.one.wg.key_created_ns > old_created
    await pair.sync(pair.one)       # the node applies its new key at once ...
    await asyncio.sleep(1.0)        # ... peers learn it a heartbeat later
    await pair.sync(pair.two)
    await asyncio.sleep(4.0)
    stream.finish()
    assert stream.errors == []
    assert stream.sent >= 50
    assert stream.received == list(range(stream.sent))
    gaps = [b - a for a, b in zip(stream.arrivals, stream.arrivals[1:], strict=False)]
    print(f"longest gap between lines across the rotation: {max(gaps):.2f} s")
    assert max(gaps) < 3.0  # bounded by how late the peer learnt the key (1 s here)
    _, peers = parse_dump(await dump(pair.two))
    assert set(peers) == {new_key}  # the old key is gone from the peer
    assert peers[new_key].last_handshake_ns > 0
    iface, _ = parse_dump(await dump(pair.one))
    assert iface.public_key == new_key


async def test_rotate_interval_makes_new_key_and_keeps_private_file(pair: Pair,
                                                                   tmp_path: Path) -> None:
    wg = WireGuard(pair.one.node_id, tmp_path / "interval", host_netns=pair.one.path,
                   listen_port=PORT, rotate_interval=0.5)
    key_file = tmp_path / "interval" / "wireguard" / "private.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = wg.public_key
    # Same state dir: the key survives a restart of the node (same public key).
    assert WireGuard(pair.one.node_id, tmp_path / "interval").public_key == first
    pair.one.wg = wg
    await pair.sync(pair.one)
    assert wg.public_key == first and wg.error == ""
    await asyncio.sleep(0.6)
    await pair.sync(pair.one)
    assert wg.public_key != first and wg.error == ""
    iface, _ = parse_dump(await dump(pair.one))
    assert iface.public_key == wg.public_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first not in key_file.read_text()  # it holds the private key, not the public


async def test_killed_wireguard_go_is_reported_and_restarted(pair: Pair) -> None:
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    await wait_ping(pair.one, pair.two.tunnel)
    pid = pair.one.wg.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not pair.one.wg.error:
        assert time.monotonic() < deadline, "error not set after wireguard-go was killed"
        await asyncio.sleep(0.05)
    assert "wireguard-go exited" in pair.one.wg.error and "signal 9" in pair.one.wg.error
    # No clear-text fallback: the tunnel address now hits the blackhole, not the underlay.
    route = await in_ns(pair.one, "ip", "route", "get", pair.two.tunnel)
    assert route.returncode != 0 or "blackhole" in route.stdout, route
    assert not await ping(pair.one, pair.two.tunnel, count=1)
    await pair.sync(pair.one)
    assert pair.one.wg.error == ""
    assert pair.one.wg.pid not in (None, pid)
    await wait_ping(pair.one, pair.two.tunnel)


async def test_removed_peer_leaves_the_interface(pair: Pair) -> None:
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    await wait_ping(pair.one, pair.two.tunnel)
    await pair.sync(pair.one, with_peer=False)
    _, peers = parse_dump(await dump(pair.one))
    assert peers == {}
    assert await pair.one.wg.peer_status() == []
    assert not await ping(pair.one, pair.two.tunnel, count=1)


async def test_port_in_use_is_reported_then_recovers(pair: Pair) -> None:
    blocker = netns.run_in_netns_sync(pair.one.path, lambda: _udp_bound(PORT))
    try:
        await pair.sync(pair.one)
        assert "in use" in pair.one.wg.error.lower(), pair.one.wg.error
    finally:
        blocker.close()
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    assert pair.one.wg.error == ""
    await wait_ping(pair.one, pair.two.tunnel)


def _udp_bound(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    return sock


async def test_close_removes_interface_process_and_route(pair: Pair) -> None:
    await pair.sync(pair.one)
    pid = pair.one.wg.pid
    assert pid is not None
    await pair.one.wg.close()
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    link = await in_ns(pair.one, "ip", "link", "show", "dev", pair.one.wg.ifname)
    assert link.returncode != 0
    routes = (await in_ns(pair.one, "ip", "route", "show", "type", "blackhole")).stdout
    assert routes.strip() == ""
    assert not Path(pair.one.wg.socket_path).exists()


async def test_missing_wireguard_go_is_reported(pair: Pair, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A PATH with the tools but without wireguard-go (this kernel has no module either).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "wg", "nsenter"):
        real = shutil.which(tool)
        assert real is not None
        (bin_dir / tool).symlink_to(real)
    monkeypatch.setenv("PATH", str(bin_dir))
    await pair.sync(pair.one)
    assert "wireguard-go is not installed" in pair.one.wg.error
    assert pair.one.wg.pid is None
    # Still no clear text: the tunnel subnet is blackholed.
    routes = (await in_ns(pair.one, "ip", "route", "show", "type", "blackhole")).stdout
    assert "100.127.0.0/16" in routes
    monkeypatch.undo()
    await pair.sync(pair.one)
    assert pair.one.wg.error == "" and pair.one.wg.pid is not None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def test_doctor_check_sees_tampering_and_sync_repairs_it(pair: Pair) -> None:
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    await wait_ping(pair.one, pair.two.tunnel)
    message = pair.message(pair.one)
    assert await pair.one.wg.check(message, pair.one.tunnel) == []
    checks = await pair.one.wg.peer_checks(message)
    assert [(c.node_id, c.public_key, c.endpoint) for c in checks] == [
        (pair.two.node_id, pair.two.wg.public_key, f"{pair.two.underlay}:{PORT}")]
    assert checks[0].last_handshake_ns > 0
    # Someone changes things by hand: doctor names each; sync puts them back.
    ifname = pair.one.wg.ifname
    await netns.nsenter(pair.one.path, "wg", "set", ifname, "peer", pair.two.wg.public_key,
                        "remove")
    await netns.nsenter(pair.one.path, "ip", "addr", "del", f"{pair.one.tunnel}/16",
                        "dev", ifname)
    await netns.nsenter(pair.one.path, "ip", "link", "set", ifname, "mtu", "1300")
    await netns.nsenter(pair.one.path, "ip", "route", "del", "blackhole", "100.127.0.0/16",
                        "metric", "4242")
    assert await pair.one.wg.check(message, pair.one.tunnel) == [
        f"wireguard peer {pair.two.wg.public_key} ({pair.two.underlay}:{PORT}): missing",
        f"wireguard address {pair.one.tunnel}/16 on {ifname}: missing",
        f"wireguard {ifname} mtu 1300; want 1440",
        "wireguard blackhole route 100.127.0.0/16: missing"]
    await pair.sync(pair.one)
    assert await pair.one.wg.check(message, pair.one.tunnel) == []
    await wait_ping(pair.one, pair.two.tunnel)
    await pair.one.wg.close()
    assert await pair.one.wg.check(message, pair.one.tunnel) == [
        f"wireguard interface {ifname}: missing"]


async def test_restarted_node_adopts_running_tunnel(pair: Pair, tmp_path: Path) -> None:
    """shoald restarts (a new object, same state dir): wireguard-go keeps running, same key,
    no restart of the tunnel."""
    await pair.sync(pair.one)
    await pair.sync(pair.two)
    await wait_ping(pair.one, pair.two.tunnel)
    pid = pair.one.wg.pid
    again = WireGuard(pair.one.node_id, tmp_path / pair.one.name, host_netns=pair.one.path,
                      listen_port=PORT)
    assert again.public_key == pair.one.wg.public_key
    await again.sync(pair.message(pair.one), pair.one.tunnel)
    assert again.error == ""
    assert pid is not None and Path(f"/proc/{pid}").exists() and not _zombie(pid)
    assert again.pid is None  # adopted, not started
    assert await again.check(pair.message(pair.one), pair.one.tunnel) == []
    await wait_ping(pair.one, pair.two.tunnel)
    await again.close()  # removing the TUN device ends the adopted wireguard-go
    link = await in_ns(pair.one, "ip", "link", "show", "dev", again.ifname)
    assert link.returncode != 0


async def test_unreachable_peer_does_not_take_the_tunnel_down(pair: Pair,
                                                              tmp_path: Path) -> None:
    # A third node whose underlay has no route from here (TEST-NET-3, not in the lab).
    far = secrets.token_hex(6)
    far_key = WireGuard(far, tmp_path / "far").public_key
    message = pair.message(pair.one)
    message.peers.append(cluster_pb2.NetworkPeer(node_id=far, addr="203.0.113.9",
                                                 tunnel_addr="100.127.0.9",
                                                 public_key=far_key))
    await pair.one.wg.sync(message, pair.one.tunnel)
    await pair.sync(pair.two)
    assert pair.one.wg.error == ""
    _, peers = parse_dump(await dump(pair.one))
    assert set(peers) == {pair.two.wg.public_key, far_key}
    await wait_ping(pair.one, pair.two.tunnel)


CHILD = """
import asyncio, sys
from netdriver.node.wireguard import WireGuard
from proto import cluster_pb2

async def main():
    node_id, state_dir, tunnel, port = sys.argv[1:5]
    wg = WireGuard(node_id, state_dir, listen_port=int(port))
    print(wg.public_key, flush=True)
    message = cluster_pb2.AssignmentsMessage.FromString(bytes.fromhex(sys.stdin.readline()))
    await wg.sync(message, tunnel)
    print("error=" + wg.error, flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # until the test says stop
    await wg.close()
    print("closed", flush=True)

asyncio.run(main())
"""


async def test_node_running_inside_its_namespace(pair: Pair, tmp_path: Path) -> None:
    """The lab's layout: shoald itself runs in the host namespace (`ip netns exec`), so the
    object is made with host_netns=None and runs ip/wg/wireguard-go where it is."""
    child = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", pair.one.name, sys.executable, "-c", CHILD,
        pair.one.node_id, str(tmp_path / "child"), pair.one.tunnel, str(PORT),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert child.stdin is not None and child.stdout is not None
    try:
        child_key = (await asyncio.wait_for(child.stdout.readline(), 20)).decode().strip()
        message = cluster_pb2.AssignmentsMessage(peers=[cluster_pb2.NetworkPeer(
            node_id=pair.two.node_id, addr=pair.two.underlay, tunnel_addr=pair.two.tunnel,
            public_key=pair.two.wg.public_key)])
        child.stdin.write(message.SerializeToString().hex().encode() + b"\n")
        await child.stdin.drain()
        assert (await asyncio.wait_for(child.stdout.readline(), 20)) == b"error=\n"
        await pair.two.wg.sync(cluster_pb2.AssignmentsMessage(peers=[cluster_pb2.NetworkPeer(
            node_id=pair.one.node_id, addr=pair.one.underlay, tunnel_addr=pair.one.tunnel,
            public_key=child_key)]), pair.two.tunnel)
        await wait_ping(pair.two, pair.one.tunnel)
        child.stdin.write(b"\n")
        await child.stdin.drain()
        assert (await asyncio.wait_for(child.stdout.readline(), 20)) == b"closed\n"
        link = await in_ns(pair.one, "ip", "link", "show", "dev", interface_name(pair.one.node_id))
        assert link.returncode != 0
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
