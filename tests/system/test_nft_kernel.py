"""VIP load balancing and the routing mesh with real nftables in real namespaces.

VIPs: a "sandbox" namespace joined by a veth to a "backends" namespace that holds three task
addresses; one TCP server there answers each connection with the address it was made to
(then echoes lines), so the client sees which backend it reached.

Routing mesh (no overlay here: plain veths and a bridge stand in for it):

    client ──veth── host ──shi0/shi1 (made by Mesh)── ingress ──br0── task1, task2
                      └──veth── task3 (a mode=host task the host can route to)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netdriver.node import mesh, nft
from netdriver.node.netns import named_netns_path, run_in_netns_sync
from proto import cluster_pb2
from proto import objects_pb2 as pb

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

PORT = 8080
# TCP: answers every connection with the address it reached, then echoes lines back.
# UDP (on each address given after the port): answers every datagram with that address.
SERVER = """
import socket, sys, threading
def serve(conn):
    with conn:
        conn.sendall((conn.getsockname()[0] + "\\n").encode())
        while data := conn.recv(4096):
            conn.sendall(data)
def serve_udp(udp, addr):
    while True:
        _, peer = udp.recvfrom(2048)
        udp.sendto(addr.encode(), peer)
for addr in sys.argv[2:]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, int(sys.argv[1])))
    threading.Thread(target=serve_udp, args=(udp, addr), daemon=True).start()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(128)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def start_server(ns: str, port: int, *udp_addrs: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                             str(port), *udp_addrs], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=5)


@dataclass
class Lab:
    sandbox: str  # namespace names
    backends_ns: str
    net: str  # "198.19.N" prefix
    vip: str
    backends: list[str]

    @property
    def path(self) -> str:
        return named_netns_path(self.sandbox)


@pytest.fixture
def lab() -> Iterator[Lab]:
    rand = secrets.token_hex(3)
    sb, be = f"shl-{rand}-sb", f"shl-{rand}-be"
    net = f"198.19.{secrets.randbelow(250) + 1}"
    made: list[str] = []
    server = None
    try:
        for ns in (sb, be):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Made inside the sandbox namespace, so no name ever appears in the root one.
        sh("ip", "-n", sb, "link", "add", "eth0", "type", "veth", "peer", "name", "vb0",
           "netns", be)
        sh("ip", "-n", sb, "addr", "add", f"{net}.2/24", "dev", "eth0")
        sh("ip", "-n", sb, "link", "set", "eth0", "up")
        backends = [f"{net}.{i}" for i in (5, 6, 7)]
        for addr in backends:
            sh("ip", "-n", be, "addr", "add", f"{addr}/24", "dev", "vb0")
        sh("ip", "-n", be, "link", "set", "vb0", "up")
        server = start_server(be, PORT, *backends)
        yield Lab(sb, be, net, f"{net}.100", backends)
    finally:
        if server is not None:
            stop(server)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def message(lab: Lab, backends: list[str]) -> cluster_pb2.AssignmentsMessage:
    record = cluster_pb2.ServiceRecord(
        service_id="svc1", name="web", vip=f"{lab.vip}/24",
        tasks=[cluster_pb2.EndpointTask(task_id=f"t{a}", addr=f"{a}/24") for a in backends])
    state = cluster_pb2.NetworkState(network=pb.Network(id="net1"), services=[record])
    return cluster_pb2.AssignmentsMessage(networks=[state])


def attachment(lab: Lab) -> list[pb.NetworkAttachment]:
    return [pb.NetworkAttachment(network_id="net1", addresses=[f"{lab.net}.2/24"])]


def connect(lab: Lab) -> socket.socket:
    def make() -> socket.socket:
        return socket.create_connection((lab.vip, PORT), timeout=3)
    return run_in_netns_sync(lab.path, make)


def reached(sock: socket.socket) -> str:
    return sock.makefile().readline().strip()


def udp_ask(path: str, addr: str, port: int) -> str:
    """One datagram from a fresh socket (a new conntrack entry) in the namespace at `path`;
    the address that answered, by its own account."""
    def go() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(b"who", (addr, port))
            return sock.recv(2048).decode()
    return run_in_netns_sync(path, go)


def hits(lab: Lab, n: int) -> dict[str, int]:
    count: dict[str, int] = {}
    for _ in range(n):
        with connect(lab) as sock:
            backend = reached(sock)
        count[backend] = count.get(backend, 0) + 1
    return count


def test_vip_spreads_updates_and_keeps_established_connections(lab: Lab) -> None:
    async def main() -> None:
        balancer = nft.SandboxBalancer()
        balancer.set_networks(message(lab, lab.backends).networks)
        await balancer.attach("task1", lab.path, attachment(lab))
        assert balancer.applies == 1

        spread = await asyncio.to_thread(hits, lab, 60)
        assert set(spread) == set(lab.backends), spread
        udp = {await asyncio.to_thread(udp_ask, lab.path, lab.vip, PORT) for _ in range(60)}
        assert udp == set(lab.backends)

        # Same state again: nothing is rewritten.
        await balancer.sync(message(lab, lab.backends))
        await balancer.attach("task1", lab.path, attachment(lab))
        assert balancer.applies == 1

        # An open connection, then its backend leaves the set: it keeps working.
        held = await asyncio.to_thread(connect, lab)
        gone = await asyncio.to_thread(reached, held)
        left = [a for a in lab.backends if a != gone]
        await balancer.sync(message(lab, left))
        assert balancer.applies == 2
        listing = await nft.read_ruleset(lab.path)
        assert nft.listed_backends(listing) == {lab.vip: left}

        held.sendall(b"still there\n")
        assert await asyncio.to_thread(reached, held) == "still there"
        held.close()

        after = await asyncio.to_thread(hits, lab, 60)
        assert gone not in after, after
        assert set(after) == set(left), after
    asyncio.run(main())


def icmp_echo(dest: str) -> tuple[str, int]:
    """One ICMP echo request to `dest` (a raw socket; this machine has no ping binary):
    the reply's source address and ICMP type."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with sock:
        sock.settimeout(2)
        packet = struct.pack("!BBHHH", 8, 0, 0, 0x5348, 1) + b"shoal-lb"
        total = sum(struct.unpack("!8H", packet[:16]))
        total = (total >> 16) + (total & 0xFFFF)
        total += total >> 16
        packet = packet[:2] + struct.pack("!H", ~total & 0xFFFF) + packet[4:]
        sock.sendto(packet, (dest, 0))
        data, peer = sock.recvfrom(1024)
        return peer[0], data[(data[0] & 0x0F) * 4]


def test_vip_answers_ping(lab: Lab) -> None:
    asyncio.run(nft.apply_ruleset(lab.path, nft.sandbox_ruleset(
        message(lab, lab.backends).networks[0].services)))
    source, kind = run_in_netns_sync(lab.path, lambda: icmp_echo(lab.vip))
    assert (source, kind) == (lab.vip, 0)  # an echo reply, from the VIP


def test_vip_without_tasks_refuses_at_once(lab: Lab) -> None:
    async def main() -> None:
        balancer = nft.SandboxBalancer()
        await balancer.sync(message(lab, []))
        await balancer.attach("task1", lab.path, attachment(lab))
    asyncio.run(main())
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        connect(lab)
    assert time.monotonic() - started < 1.0


def test_replace_leaves_no_gap_and_repair_restores_a_flushed_table(lab: Lab) -> None:
    async def main() -> None:
        balancer = nft.SandboxBalancer()
        balancer.set_networks(message(lab, lab.backends).networks)
        await balancer.attach("task1", lab.path, attachment(lab))
        assert await balancer.repair() == []

        # Connect in a loop while the table is replaced 30 times: every connect succeeds.
        stop_flag = False
        failures: list[str] = []
        done = 0

        def client() -> None:
            nonlocal done
            while not stop_flag:
                try:
                    with connect(lab) as sock:
                        assert reached(sock) in lab.backends
                    done += 1
                except OSError as err:
                    failures.append(repr(err))
        task = asyncio.create_task(asyncio.to_thread(client))
        for i in range(30):
            await balancer.sync(message(lab, lab.backends[: 1 + i % 3]))
        stop_flag = True
        await task
        assert failures == []
        assert done > 0

        # Someone flushes the table: repair notices and puts it back.
        await nft.delete_table(lab.path)
        assert await nft.read_ruleset(lab.path) == ""
        found = await balancer.repair()
        assert found == ["task1: table ip shoal missing"]
        assert nft.listed_backends(await nft.read_ruleset(lab.path)) != {}

        await balancer.detach("task1")
        await balancer.sync(message(lab, []))  # a detached sandbox is no longer written
        assert nft.listed_backends(await nft.read_ruleset(lab.path)) != {lab.vip: []}
    asyncio.run(main())


# ---------------------------------------------------------------- routing mesh

PUBLISHED, TARGET = 8080, 80
HOST_PUBLISHED, HOST_TARGET = 9000, 90


@dataclass
class MeshLab:
    names: dict[str, str]  # role → namespace name
    host_addr: str
    tasks: list[str]  # the ingress tasks' addresses
    host_task: str  # the mode=host task's address

    def path(self, role: str) -> str:
        return named_netns_path(self.names[role])


def veth(a: str, a_dev: str, a_addr: str, b: str, b_dev: str, b_addr: str) -> None:
    """A veth pair made inside namespace `a`, one end moved to `b`, both up."""
    sh("ip", "-n", a, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev,
       "netns", b)
    for ns, dev, addr in ((a, a_dev, a_addr), (b, b_dev, b_addr)):
        if addr:
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


@pytest.fixture
def mlab() -> Iterator[MeshLab]:
    rand = secrets.token_hex(3)
    names = {role: f"shl-{rand}-{role}" for role in ("h", "c", "ing", "t1", "t2", "t3")}
    x = secrets.randbelow(250) + 1
    made: list[str] = []
    servers: list[subprocess.Popen[str]] = []
    try:
        for ns in names.values():
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        host_addr = f"198.18.{x}.1"
        veth(names["c"], "eth0", f"198.18.{x}.2/24", names["h"], "ce0", f"{host_addr}/24")
        # The ingress namespace's "overlay": a bridge with the node's ingress address.
        ing = names["ing"]
        sh("ip", "-n", ing, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ing, "addr", "add", f"10.255.{x}.3/24", "dev", "br0")
        sh("ip", "-n", ing, "link", "set", "br0", "up")
        tasks = [f"10.255.{x}.7", f"10.255.{x}.8"]
        for i, addr in enumerate(tasks, 1):
            veth(names[f"t{i}"], "eth0", f"{addr}/24", ing, f"vt{i}", "")
            sh("ip", "-n", ing, "link", "set", f"vt{i}", "master", "br0")
            servers.append(start_server(names[f"t{i}"], TARGET, addr))
        host_task = f"10.9.{x}.2"
        veth(names["t3"], "eth0", f"{host_task}/24", names["h"], "t3e", f"10.9.{x}.1/24")
        servers.append(start_server(names["t3"], HOST_TARGET))
        yield MeshLab(names, host_addr, tasks, host_task)
    finally:
        for proc in servers:
            stop(proc)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def mesh_message(tasks: list[str]) -> cluster_pb2.AssignmentsMessage:
    record = cluster_pb2.ServiceRecord(
        service_id="svc1", name="web", vip="10.255.0.2/24",
        tasks=[cluster_pb2.EndpointTask(task_id=f"t{a}", addr=f"{a}/24") for a in tasks],
        ports=[pb.PortConfig(published_port=PUBLISHED, target_port=TARGET),
               pb.PortConfig(published_port=PUBLISHED + 1, target_port=TARGET,
                             protocol=pb.PortConfig.Protocol.UDP)])
    ingress = pb.Network(id="ingress1", spec=pb.NetworkSpec(ingress=True))
    return cluster_pb2.AssignmentsMessage(
        networks=[cluster_pb2.NetworkState(network=ingress, services=[record])])


def host_mode_task(mlab: MeshLab) -> pb.Task:
    task = pb.Task(id="t3", networks=[pb.NetworkAttachment(
        network_id="app", addresses=[f"{mlab.host_task}/24"])])
    task.endpoint.ports.append(pb.PortConfig(
        published_port=HOST_PUBLISHED, target_port=HOST_TARGET,
        publish_mode=pb.PortConfig.PublishMode.HOST))
    return task


def ingress_host_task(mlab: MeshLab) -> pb.Task:
    """A mode-host task on the ingress network (task2's namespace): reached through the
    ingress namespace, the host has no route to it."""
    task = pb.Task(id="t4", networks=[pb.NetworkAttachment(
        network_id="ingress1", addresses=[f"{mlab.tasks[1]}/24"])])
    task.endpoint.ports.append(pb.PortConfig(
        published_port=HOST_PUBLISHED + 1, target_port=TARGET,
        publish_mode=pb.PortConfig.PublishMode.HOST))
    return task


def ask(path: str, addr: str, port: int) -> str:
    """Connect from the namespace at `path`; the address the server says it was reached at."""
    def go() -> str:
        with socket.create_connection((addr, port), timeout=3) as sock:
            return sock.makefile().readline().strip()
    return run_in_netns_sync(path, go)


def spread_from(path: str, addr: str, port: int, n: int) -> dict[str, int]:
    count: dict[str, int] = {}
    for _ in range(n):
        who = ask(path, addr, port)
        count[who] = count.get(who, 0) + 1
    return count


def test_published_port_answers_on_the_host_from_every_task(mlab: MeshLab) -> None:
    m = mesh.Mesh(mlab.names["ing"], host_netns=mlab.path("h"))
    local = [host_mode_task(mlab), ingress_host_task(mlab)]
    try:
        asyncio.run(m.sync(mesh_message(mlab.tasks), local))
        assert m.applies == 2

        # From a client elsewhere (prerouting), ~50 connects reach both tasks.
        got = spread_from(mlab.path("c"), mlab.host_addr, PUBLISHED, 50)
        assert set(got) == set(mlab.tasks), got
        udp = {udp_ask(mlab.path("c"), mlab.host_addr, PUBLISHED + 1) for _ in range(50)}
        assert udp == set(mlab.tasks)
        # From the host itself (output), to its own address and to 127.0.0.1.
        assert ask(mlab.path("h"), mlab.host_addr, PUBLISHED) in mlab.tasks
        assert ask(mlab.path("h"), "127.0.0.1", PUBLISHED) in mlab.tasks
        # Mode host: to the local task, straight from the host or through the ingress
        # namespace when the task is on the ingress network.
        assert ask(mlab.path("c"), mlab.host_addr, HOST_PUBLISHED) == mlab.host_task
        assert ask(mlab.path("c"), mlab.host_addr, HOST_PUBLISHED + 1) == mlab.tasks[1]

        # The same state again rewrites nothing.
        asyncio.run(m.sync(mesh_message(mlab.tasks), local))
        assert m.applies == 2

        # One task leaves: no new connection goes to it; the host table is unchanged; a
        # connection open through both DNATs stays with the task that left.
        def open_to_second() -> socket.socket:
            while True:
                sock = socket.create_connection((mlab.host_addr, PUBLISHED), timeout=3)
                if sock.makefile().readline().strip() == mlab.tasks[1]:
                    return sock
                sock.close()
        held = run_in_netns_sync(mlab.path("c"), open_to_second)
        asyncio.run(m.sync(mesh_message(mlab.tasks[:1]), local))
        assert m.applies == 3
        held.sendall(b"still there\n")
        assert reached(held) == "still there"
        held.close()
        got = spread_from(mlab.path("c"), mlab.host_addr, PUBLISHED, 20)
        assert set(got) == {mlab.tasks[0]}, got

        # No task: refused at once, not a hang. The host-mode task is gone too.
        asyncio.run(m.sync(mesh_message([]), []))
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            ask(mlab.path("c"), mlab.host_addr, PUBLISHED)
        with pytest.raises(ConnectionRefusedError):
            ask(mlab.path("c"), mlab.host_addr, HOST_PUBLISHED)
        with pytest.raises(ConnectionRefusedError):
            ask(mlab.path("c"), mlab.host_addr, HOST_PUBLISHED + 1)
        assert time.monotonic() - started < 2.0
    finally:
        asyncio.run(m.close())
    assert not os.path.exists(mlab.path("ing"))
    assert asyncio.run(nft.read_ruleset(mlab.path("h"), mesh.TABLE)) == ""
    links = sh("ip", "-n", mlab.names["h"], "-o", "link")
    assert "shi0" not in links

    # A missing ingress namespace is made (and `prepare` says so: attach it again).
    fresh = mesh.Mesh(mlab.names["ing"], host_netns=mlab.path("h"))
    try:
        assert asyncio.run(fresh.prepare()) is True
        assert os.path.exists(mlab.path("ing"))
        assert asyncio.run(fresh.prepare()) is False
    finally:
        asyncio.run(fresh.close())


def test_mesh_converges_after_its_state_is_broken(mlab: MeshLab) -> None:
    async def main() -> None:
        m = mesh.Mesh(mlab.names["ing"], host_netns=mlab.path("h"))
        try:
            await m.sync(mesh_message(mlab.tasks), [])
            assert await m.differences() == []
            assert await m.prepare() is False  # the fixture made the namespace

            # Someone deletes the host table and the veth: reported, then repaired.
            await nft.delete_table(mlab.path("h"), mesh.TABLE)
            sh("ip", "-n", mlab.names["h"], "link", "del", "shi0")
            found = await m.differences()
            h, ing = mlab.path("h"), mlab.path("ing")
            assert found == [f"veth shi0 in {h}: missing", f"veth shi1 in {ing}: missing",
                             f"table ip shoal_mesh in {h}: missing or different"], found
            await m.sync(mesh_message(mlab.tasks), [])
            assert await m.differences() == []

            # Forwarding turned off in the ingress namespace: reported, then turned on.
            sh("ip", "netns", "exec", mlab.names["ing"], "sysctl", "-qw",
               "net.ipv4.ip_forward=0")
            assert await m.differences() == [f"sysctl net.ipv4.ip_forward in {ing}: 0, not 1"]
            await m.sync(mesh_message(mlab.tasks), [])
            assert await m.differences() == []
            got = await asyncio.to_thread(spread_from, mlab.path("c"), mlab.host_addr,
                                          PUBLISHED, 30)
            assert set(got) == set(mlab.tasks), got

            # A Mesh made anew (shoald restarted) converges onto the existing state.
            again = mesh.Mesh(mlab.names["ing"], host_netns=mlab.path("h"))
            await again.sync(mesh_message(mlab.tasks), [])
            assert await again.differences() == []
            links = sh("ip", "-n", mlab.names["h"], "-o", "link")
            assert links.count("shi0") == 1
            tables = sh("ip", "netns", "exec", mlab.names["h"], "nft", "list", "tables")
            assert tables.count("shoal_mesh") == 1
        finally:
            await m.close()
    asyncio.run(main())
