"""shoald: the node daemon. Serves the HTTP API and runs the node's roles."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import urllib.parse

from aiohttp import web

from shoal.api.server import make_app
from shoal.node import Node
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
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


async def _sites(runner: web.AppRunner, hosts: list[str]) -> list[web.BaseSite]:
    sites: list[web.BaseSite] = []
    for host in hosts:
        url = urllib.parse.urlparse(host)
        if url.scheme == "unix":
            os.makedirs(os.path.dirname(url.path) or "/", exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(url.path)
            site: web.BaseSite = web.UnixSite(runner, url.path)
        elif url.scheme == "tcp":
            site = web.TCPSite(runner, url.hostname, url.port or 2375)
        else:
            raise SystemExit(f"shoald: unsupported --host {host!r}: use unix:// or tcp://")
        await site.start()
        if url.scheme == "unix":
            os.chmod(url.path, 0o600)  # the API is root's, like Docker's socket
        sites.append(site)
    return sites


async def serve(args: argparse.Namespace) -> None:
    node = Node(args.data_root, args.hostname or socket.gethostname(),
                executor=make_executor(args.executor, args.engine))
    await node.start()
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    await _sites(runner, args.host or ["unix:///run/shoal/shoal.sock"])
    log.info("shoald ready (node state %s)", node.local_state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shoald stopping")
    await runner.cleanup()
    await node.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
