"""The resolver at 127.0.0.11:53 (UDP and TCP) inside every task's sandbox.

The node opens each sandbox's sockets inside the sandbox's namespace (a socket keeps the
namespace it was made in) and serves all of them from its own event loop, answering from
the records of the networks the sandbox is attached to (records.py). Names that are not
ours are forwarded, from the node's own namespace, to the node's upstream resolvers (or to
the task's own, `--dns` of its service: Docker's DNSConfig.Nameservers).
Records are replaced whole by every assignments update and never cached, so the next query
after an update sees the new set.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from netdriver.node import netns
from netdriver.node.dnswire import (
    address_response,
    error_response,
    formerr,
    local_response,
    render,
    udp_limit,
)
from netdriver.node.records import NetworkRecords, answer, build_records, may_forward
from netdriver.node.upstreams import PORT, Upstream, host_upstreams, parse_upstream, task_upstreams
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

ADDRESS = "127.0.0.11"
TCP_LIMIT = 65535
SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1
MAX_FORWARDS = 100  # queries waiting on upstreams at once; more get SERVFAIL (Docker's cap)
MAX_TCP_CLIENTS = 32  # open TCP connections per sandbox; more are closed at once
TCP_IDLE = 10.0  # seconds a TCP client may stay silent between queries


# --- serving ---------------------------------------------------------------------------

@dataclass
class _Sandbox:
    netns_path: str
    network_ids: tuple[str, ...]
    udp: asyncio.DatagramTransport
    tcp: asyncio.Server
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, key: str) -> None:
        self.resolver, self.key = resolver, key
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.resolver._udp_query(self.key, self, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("resolver %s: udp error %s", self.key, exc)


class Resolver:
    """Docker's embedded DNS for the node's sandboxes; one instance per node."""

    def __init__(self, upstreams: list[str] | None = None, *, timeout: float = 4.0,
                 upstream_timeout: float = 2.0, max_forwards: int = MAX_FORWARDS,
                 max_tcp_clients: int = MAX_TCP_CLIENTS) -> None:
        names = host_upstreams() if upstreams is None else upstreams
        self.upstreams: list[Upstream] = [parse_upstream(u) for u in names]
        self.timeout = timeout  # every upstream together: under the client's own 5 s retry
        self.upstream_timeout = upstream_timeout
        self.max_forwards = max_forwards
        self.max_tcp_clients = max_tcp_clients  # a task must not tie up the node's loop
        self._records: dict[str, NetworkRecords] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        self._task_upstreams: dict[str, list[Upstream]] = {}  # by task ID (= sandbox key)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, holders and waiters
        self._forwards: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # queries waiting on an upstream, UDP and TCP

    # -- records

    def set_networks(self, networks: Sequence[cluster_pb2.NetworkState]) -> None:
        """Replace every record at once: the next query sees only these."""
        self._records = build_records(networks)

    async def sync(self, message: cluster_pb2.AssignmentsMessage) -> None:
        self.set_networks(message.networks)
        self._task_upstreams = task_upstreams(message.tasks)

    # -- sandboxes

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None:
        """Serve 127.0.0.11:53 in the namespace at `netns_path`, answering from the networks
        of `attachments`. Idempotent; a new namespace for `key` replaces the old one."""
        network_ids = tuple(a.network_id for a in attachments)
        async with self._lock(key):
            current = self._sandboxes.get(key)
            if current is not None and current.netns_path == netns_path:
                current.network_ids = network_ids
                return
            if current is not None:
                self._close_sandbox(self._sandboxes.pop(key))
            self._sandboxes[key] = await self._open(key, netns_path, network_ids)

    async def detach(self, key: str) -> None:
        async with self._lock(key):
            sandbox = self._sandboxes.pop(key, None)
            if sandbox is not None:
                self._close_sandbox(sandbox)
                await sandbox.tcp.wait_closed()

    async def close(self) -> None:
        for key in list(self._sandboxes):
            await self.detach(key)
        for task in list(self._forwards):
            task.cancel()
        await asyncio.gather(*self._forwards, return_exceptions=True)

    async def repair(self) -> list[str]:
        """Reopen the sockets of any sandbox whose UDP or TCP side stopped serving (the
        periodic reconcile, like the data plane's other extras); returns what was found
        ("<key>: <what>")."""
        found: list[str] = []
        for key in list(self._sandboxes):
            async with self._lock(key):
                sandbox = self._sandboxes.get(key)
                if sandbox is None:
                    continue
                dead = [name for name, closed in (("udp", sandbox.udp.is_closing()),
                                                  ("tcp", not sandbox.tcp.is_serving()))
                        if closed]
                if not dead:
                    continue
                self._close_sandbox(self._sandboxes.pop(key))
                try:
                    self._sandboxes[key] = await self._open(key, sandbox.netns_path,
                                                            sandbox.network_ids)
                    found.append(f"{key}: resolver {'+'.join(dead)} socket closed; reopened")
                except (OSError, subprocess.CalledProcessError) as err:
                    found.append(f"{key}: resolver {'+'.join(dead)} socket closed; "
                                 f"reopening failed: {err}")
        return found

    def names(self, network_id: str) -> dict[str, tuple[str, ...]]:
        """Every name of a network and its addresses, as queries get them now (for
        `network doctor`); empty for a network the node has no records of."""
        net = self._records.get(network_id)
        return {} if net is None else {n: e.addresses for n, e in net.names.items()}

    def attached(self) -> dict[str, tuple[str, ...]]:
        """Each sandbox key and the network ids it answers from (for `network doctor`)."""
        return {key: sb.network_ids for key, sb in self._sandboxes.items()}

    @contextlib.asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        """One attach/detach of a key at a time; the lock goes when nobody holds or waits
        for it (keys are task ids: they never come back, so kept locks would pile up)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _open(self, key: str, netns_path: str,
                    network_ids: tuple[str, ...]) -> _Sandbox:
        # A fresh namespace has lo down: binding 127.0.0.11 works but nothing reaches it.
        if not await netns.run_in_netns(netns_path, _lo_is_up):
            await netns.nsenter(netns_path, "ip", "link", "set", "lo", "up")
        udp_sock, tcp_sock = await netns.run_in_netns(netns_path, _bind_sockets)
        loop = asyncio.get_running_loop()
        try:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self, key), sock=udp_sock)
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        try:
            tcp = await asyncio.start_server(
                lambda r, w: self._tcp_client(key, r, w), sock=tcp_sock)
        except BaseException:
            udp.close()
            tcp_sock.close()
            raise
        return _Sandbox(netns_path, network_ids, udp, tcp)

    @staticmethod
    def _close_sandbox(sandbox: _Sandbox) -> None:
        sandbox.udp.close()
        sandbox.tcp.close()
        for writer in list(sandbox.writers):
            writer.close()

    # -- queries

    def _network_ids(self, key: str) -> tuple[str, ...] | None:
        sandbox = self._sandboxes.get(key)
        return sandbox.network_ids if sandbox is not None else None

    def _local(self, key: str, query: dns.message.Message, limit: int) -> bytes | None:
        """The wire response from our records, or None when the query goes upstream."""
        if query.opcode() != dns.opcode.QUERY:
            return render(error_response(query, dns.rcode.NOTIMP), limit)
        if len(query.question) != 1:
            return render(error_response(query, dns.rcode.FORMERR), limit)
        question = query.question[0]
        network_ids = self._network_ids(key) or ()
        found = answer(self._records, network_ids, question.name.to_text(), question.rdtype)
        if found is None:
            return None
        fast = address_response(query, found, limit)
        return fast if fast is not None else render(local_response(query, found), limit)

    def _forwardable(self, key: str) -> bool:
        return (self._in_flight < self.max_forwards
                and may_forward(self._records, self._network_ids(key) or ()))

    def _udp_query(self, key: str, proto: _UdpProtocol, data: bytes,
                   addr: tuple[str | object, int]) -> None:
        if proto.transport is None:
            return
        try:
            query = dns.message.from_wire(data)
        except Exception:  # anything unparsable: dnspython raises many kinds
            reply = formerr(data)
            if reply is not None:
                proto.transport.sendto(reply, addr)
            return
        limit = udp_limit(query)
        try:
            reply = self._local(key, query, limit)
            if reply is None and not self._forwardable(key):
                reply = render(error_response(query, dns.rcode.SERVFAIL), limit)
        except Exception:  # a bug must cost one answer, not the sandbox's resolver
            log.exception("resolver %s: query %s", key, query.question)
            reply = render(error_response(query, dns.rcode.SERVFAIL), limit)
        if reply is not None:
            proto.transport.sendto(reply, addr)
            return
        task = asyncio.get_running_loop().create_task(self._forward_udp(proto, query, addr))
        self._forwards.add(task)
        task.add_done_callback(self._forwards.discard)

    async def _forward_udp(self, proto: _UdpProtocol, query: dns.message.Message,
                           addr: tuple[str | object, int]) -> None:
        response = await self._forward(proto.key, query, tcp=False)
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.sendto(render(response, udp_limit(query)), addr)

    async def _forward(self, key: str, query: dns.message.Message,
                       tcp: bool) -> dns.message.Message:
        """The first upstream's answer; SERVFAIL when none answers within the timeout."""
        self._in_flight += 1
        try:
            upstreams = self._task_upstreams.get(key) or self.upstreams
            return await self._ask_upstreams(query, tcp, upstreams)
        finally:
            self._in_flight -= 1

    async def _ask_upstreams(self, query: dns.message.Message, tcp: bool,
                             upstreams: Sequence[Upstream]) -> dns.message.Message:
        deadline = time.monotonic() + self.timeout
        for host, port in upstreams:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            wait = min(self.upstream_timeout, left)
            try:
                if tcp:
                    return await dns.asyncquery.tcp(query, host, timeout=wait, port=port)
                return await dns.asyncquery.udp(query, host, timeout=wait, port=port,
                                                ignore_unexpected=True)
            except (dns.exception.DNSException, OSError, EOFError) as err:
                log.debug("resolver: upstream %s:%d failed: %r", host, port, err)
        return error_response(query, dns.rcode.SERVFAIL)

    async def _tcp_client(self, key: str, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        sandbox = self._sandboxes.get(key)
        if sandbox is None or len(sandbox.writers) >= self.max_tcp_clients:
            writer.close()
            return
        sandbox.writers.add(writer)
        try:
            while True:
                size = struct.unpack("!H", await asyncio.wait_for(
                    reader.readexactly(2), TCP_IDLE))[0]
                data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                reply = await self._tcp_reply(key, data)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client went away or went quiet
        finally:
            sandbox.writers.discard(writer)
            writer.close()

    async def _tcp_reply(self, key: str, data: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # unparsable: FORMERR if its id is readable, else hang up
            return formerr(data)
        try:
            reply = self._local(key, query, TCP_LIMIT)
            if reply is not None:
                return reply
            if not self._forwardable(key):
                return render(error_response(query, dns.rcode.SERVFAIL), TCP_LIMIT)
        except Exception:  # a bug must cost one answer, not the connection
            log.exception("resolver %s: query %s", key, query.question)
            return render(error_response(query, dns.rcode.SERVFAIL), TCP_LIMIT)
        return render(await self._forward(key, query, tcp=True), TCP_LIMIT)


def _lo_is_up() -> bool:
    """Whether `lo` of the calling thread's namespace is up (SIOCGIFFLAGS: no process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request)[:18])[1]
    return bool(flags & IFF_UP)


def _bind_sockets() -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on 127.0.0.11:53, made on the calling thread (inside the
    sandbox's namespace: they stay there)."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((ADDRESS, PORT))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((ADDRESS, PORT))
        tcp.listen(64)
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp
