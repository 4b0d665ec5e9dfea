"""shoald: the node daemon. Serves the HTTP API and runs the node's roles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import urllib.parse

from aiohttp import web

from manager.raft.guarded import RaftFailed
from manager.raft.journal import RaftStateDamaged, set_aside
from shoal import apitls, logformat, restore
from shoal.api.server import make_app
from shoal.api.swarm import addresses
from shoal.client import DEFAULT_HOST
from shoal.errors import InvalidRequest
from shoal.gcwatch import GcWatch
from shoal.newcluster import RestoreRequest
from shoal.node import Node
from shoal.nodestate import DataRoot
from shoal.restore import RestoreRefused
from shoal.worker_role import NetworkOptions
from worker.executor import DEFAULT_ENGINE, KINDS, make_executor

log = logging.getLogger("shoald")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shoald", description="Shoal node daemon")
    p.add_argument("--data-root", default="/var/lib/shoal", help="state directory")
    p.add_argument("--host", "-H", action="append", default=[],
                   help="API listener: unix:///PATH or tcp://ADDR:PORT (repeatable)")
    p.add_argument("--hostname", default=None, help="name this node reports (default: host's)")
    p.add_argument("--engine", default=DEFAULT_ENGINE,
                   help="container engine API socket, unix:///PATH (default %(default)s)")
    p.add_argument("--executor", default="docker", choices=KINDS,
                   help="run tasks on the engine (docker) or pretend to (fake: tests)")
    p.add_argument("--netns-prefix", default="shl-n",
                   help="name prefix of the network namespaces this node's overlay networks "
                        "use (labs give each host its own)")
    p.add_argument("--dns-upstream", action="append", default=None, metavar="IP[:PORT]",
                   help="resolver that tasks' names not in the swarm are forwarded to "
                        "(repeatable; default: the host's /etc/resolv.conf)")
    p.add_argument("--wireguard-port", type=int, default=51820,
                   help="UDP port of the node's WireGuard tunnel (encrypted networks)")
    p.add_argument("--key-rotation", type=float, default=None, metavar="SECONDS",
                   help="make a new WireGuard key pair this often (default: never)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=logformat.FORMATS,
                   help="log lines as text or JSON, each naming its component and, where "
                        "there is one, the node, service and task (default %(default)s)")
    _tls_args(p)
    p.add_argument("--reset-raft-state", action="store_true",
                   help="move this manager's damaged Raft files aside (its keys stay) and "
                        "exit; started again, it catches up from the other managers")
    p.add_argument("--force-new-cluster", action="store_true",
                   help="on a manager of a swarm that lost its quorum: become the only "
                        "manager, keeping the services (as `docker swarm init "
                        "--force-new-cluster`)")
    p.add_argument("--restore", metavar="FILE", default=None,
                   help="on a fresh host (empty data root): start a one-manager swarm from a "
                        "backup (`shoal swarm backup FILE`) with its services, networks, "
                        "secrets, configs, nodes, CA and join tokens")
    p.add_argument("--unlock-key", default=None, metavar="SWMKEY-1-...",
                   help="with --restore: the unlock key of an encrypted (autolock) backup "
                        "(asked on the terminal when not given)")
    p.add_argument("--advertise-addr", default="", metavar="IP[:PORT]",
                   help="with --restore: the address other nodes reach this manager at "
                        "(give the old manager's to let its workers reconnect by themselves)")
    p.add_argument("--listen-addr", default="0.0.0.0:2377", metavar="IP[:PORT]",
                   help="with --restore: the cluster port's listen address (default "
                        "%(default)s)")
    return p.parse_args(argv)


def _tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", action="store_true",
                   help="serve TCP listeners with TLS (implied by --tlsverify)")
    p.add_argument("--tlsverify", action="store_true",
                   help="serve TCP listeners with TLS and require client certificates "
                        "signed by --tlscacert")
    p.add_argument("--tlscacert", metavar="FILE", help="trust client certificates signed "
                   "by this CA (the swarm's root: DATA_ROOT/certificates/ca.crt)")
    p.add_argument("--tlscert", metavar="FILE", help="the TCP listeners' certificate")
    p.add_argument("--tlskey", metavar="FILE", help="the TCP listeners' private key")
    p.add_argument("--insecure-tcp", action="store_true",
                   help="allow tcp:// listeners without TLS (plain HTTP: whoever reaches "
                        "the port controls the swarm)")


def listener_tls(args: argparse.Namespace) -> apitls.ListenerTLS:
    return apitls.ListenerTLS(tls=args.tls, verify=args.tlsverify, cacert=args.tlscacert,
                              cert=args.tlscert, key=args.tlskey,
                              insecure_tcp=args.insecure_tcp)


def restore_request(args: argparse.Namespace) -> RestoreRequest:
    """Check a --restore before anything is written (RestoreRefused says why not)."""
    try:
        addrs = addresses({"ListenAddr": args.listen_addr, "AdvertiseAddr": args.advertise_addr})
    except InvalidRequest as err:
        raise RestoreRefused(f"--restore: {err}") from None
    return restore.prepare(args.restore, args.data_root, args.unlock_key, addrs)


def raft_recovery(data_root: str) -> str:
    return (f"To recover, run `shoald --data-root {data_root} --reset-raft-state` (it moves the "
            "Raft files aside and keeps the Raft keys), then start shoald again: as a member "
            "of the Raft group it catches up from the other managers. If it is the only "
            f"manager, restore {data_root} from a backup instead.")


def damaged_message(err: RaftStateDamaged, data_root: str) -> str:
    return (f"shoald: this manager's Raft state is damaged; it will not start.\n"
            f"  file:    {err.path}\n  problem: {err.problem}\n{raft_recovery(data_root)}")


def reset_raft_state(data_root: str) -> str:
    raft_dir = DataRoot(data_root).raft_dir
    if not os.path.isdir(raft_dir):
        return f"shoald: no Raft state in {raft_dir}; nothing to reset"
    aside, moved = set_aside(raft_dir)
    if not moved:
        return f"shoald: no Raft files in {raft_dir}; nothing to reset"
    return (f"shoald: moved {', '.join(moved)} from {raft_dir} to {aside}; start shoald again "
            "and it catches up from the other managers")


async def _sites(runner: web.AppRunner, hosts: list[str],
                 ssl_context: ssl.SSLContext | None) -> list[web.BaseSite]:
    sites: list[web.BaseSite] = []
    for host in hosts:
        url = urllib.parse.urlparse(host)
        if url.scheme == "unix":
            os.makedirs(os.path.dirname(url.path) or "/", exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(url.path)
            site: web.BaseSite = web.UnixSite(runner, url.path)
        elif url.scheme == "tcp":
            port = url.port or (2376 if ssl_context else 2375)
            site = web.TCPSite(runner, url.hostname, port, ssl_context=ssl_context)
        else:
            raise SystemExit(f"shoald: unsupported --host {host!r}: use unix:// or tcp://")
        await site.start()
        if url.scheme == "unix":
            os.chmod(url.path, 0o600)  # the API is root's, like Docker's socket
        sites.append(site)
    return sites


def _listener_setup(args: argparse.Namespace) -> tuple[list[str], ssl.SSLContext | None]:
    """The API listeners and their TLS context; TLSConfigError if they must not start."""
    hosts = args.host or [DEFAULT_HOST]
    opts = listener_tls(args)
    for warning in apitls.check(hosts, opts):
        log.warning("%s", warning)
    return hosts, apitls.server_context(opts) if opts.enabled else None


async def serve(args: argparse.Namespace,
                context: logformat.ContextFilter | None = None,
                restoring: RestoreRequest | None = None,
                gcwatch: GcWatch | None = None) -> str | None:
    """Run until SIGTERM/SIGINT; returns why the node failed, if it did."""
    try:
        hosts, ssl_context = _listener_setup(args)
    except apitls.TLSConfigError as err:
        return f"shoald: {err}"
    node = Node(args.data_root, args.hostname or socket.gethostname(),
                executor=make_executor(args.executor, args.engine),
                network=NetworkOptions(args.netns_prefix, args.dns_upstream,
                                       args.wireguard_port, args.key_rotation))
    if gcwatch is not None:  # a Raft leader's long pause moves the leadership
        gcwatch.may_pause = lambda: not node.leads()
    stop = asyncio.Event()
    failed: list[RaftFailed] = []
    loop = asyncio.get_running_loop()

    def fail(err: RaftFailed) -> None:
        failed.append(err)
        stop.set()

    def raft_failed(err: RaftFailed) -> None:  # on Raft's thread
        loop.call_soon_threadsafe(fail, err)

    node.on_fatal = raft_failed
    if context is not None:
        context.node_id = lambda: node.state.node_id if node.state else None
    try:
        await node.start()
    except RaftStateDamaged as err:
        return damaged_message(err, args.data_root)
    if restoring is not None:
        node_id = await node.restore(restoring)
        log.info("restored the swarm from %s: node %s is its only manager", args.restore,
                 node_id)
    if args.force_new_cluster:
        if node.manager_role is None:
            log.warning("--force-new-cluster ignored: this node is %s, not a running manager "
                        "(a locked one: unlock it, then `docker swarm init "
                        "--force-new-cluster`)", node.local_state)
        else:
            log.info("forced a new cluster: node %s is the only manager",
                     await node.force_new_cluster())
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    await _sites(runner, hosts, ssl_context)
    log.info("shoald ready (node state %s)", node.local_state)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shoald stopping")
    await runner.cleanup()
    await node.stop()
    if failed:
        return f"shoald: {failed[0]}\n{raft_recovery(args.data_root)}"
    return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    context = logformat.setup(args.log_format, args.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    gcwatch = GcWatch()
    gcwatch.install()
    if args.reset_raft_state:
        print(reset_raft_state(args.data_root))
        return
    restoring = None
    if args.restore:
        try:
            restoring = restore_request(args)
        except RestoreRefused as err:
            print(f"shoald: will not restore: {err}", file=sys.stderr, flush=True)
            sys.exit(1)
    failure = asyncio.run(serve(args, context, restoring, gcwatch))
    if failure is not None:
        print(failure, file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
