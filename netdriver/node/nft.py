"""VIP load balancing inside each sandbox, with nftables (Docker uses IPVS; we have none).

Every sandbox gets a `table ip shoal` whose nat output chain sends traffic for a service's
VIP (all protocols and ports, so ping works too) to one of the service's running tasks,
picked by `numgen random`. A VIP with no task refuses (TCP reset, ICMP unreachable) rather
than letting the client hang on an address nobody answers. Conntrack keeps an established
connection on the backend it started with.

A table is always replaced whole in one `nft -f -` transaction (create if missing, delete,
define again), so the namespace never sees a moment without rules.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netdriver.ipam import bare
from netdriver.node.netns import nsenter
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

TABLE = "shoal"
VIP_MODE = pb.EndpointSpec.ResolutionMode.VIP


def replace_table(name: str, chains: Sequence[str]) -> str:
    """The text of one atomic transaction replacing `table ip <name>` by `chains`.

    `table` first creates it when missing, so the `delete` never fails."""
    body = "\n".join(chains)
    return f"table ip {name}\ndelete table ip {name}\ntable ip {name} {{\n{body}}}\n"


def chain(name: str, hook: str, rules: Iterable[str], kind: str = "nat",
          priority: int = -100) -> str:
    lines = [f"\tchain {name} {{",
             f"\t\ttype {kind} hook {hook} priority {priority}; policy accept;"]
    lines += [f"\t\t{rule}" for rule in rules]
    return "\n".join(lines) + "\n\t}\n"


def pick(addrs: Sequence[str], port: int | None = None) -> str:
    """A DNAT target: one address, or a random one of several (`numgen random mod N`),
    with `port` appended when the port changes."""
    suffix = f":{port}" if port else ""
    if len(addrs) == 1:
        return f"dnat to {addrs[0]}{suffix}"
    pairs = ", ".join(f"{i} : {a}" for i, a in enumerate(addrs))
    return f"dnat to numgen random mod {len(addrs)} map {{ {pairs} }}{suffix}"


def backends(record: cluster_pb2.ServiceRecord) -> list[str]:
    """The record's task addresses, sorted and without duplicates (so the text, and the
    decision to rewrite, depends only on the set)."""
    return sorted({bare(t.addr) for t in record.tasks if t.addr},
                  key=sort_key)


def sort_key(addr: str) -> tuple[int, ...]:
    return tuple(int(part) for part in addr.split("."))


def balanced(services: Sequence[cluster_pb2.ServiceRecord]) -> dict[str, list[str]]:
    """VIP → backends of every VIP-mode service (dnsrr services have no VIP)."""
    out: dict[str, list[str]] = {}
    for record in services:
        if record.mode == VIP_MODE and record.vip:
            out.setdefault(bare(record.vip), [])
            out[bare(record.vip)] = sorted(
                set(out[bare(record.vip)]) | set(backends(record)), key=sort_key)
    return dict(sorted(out.items(), key=lambda kv: sort_key(kv[0])))


def sandbox_ruleset(services: Sequence[cluster_pb2.ServiceRecord]) -> str:
    """The transaction that makes a sandbox's `table ip shoal` balance `services`."""
    vips = balanced(services)
    dnat = [f"ip daddr {vip} {pick(addrs)}" for vip, addrs in vips.items() if addrs]
    refuse: list[str] = []
    for vip, addrs in vips.items():
        if not addrs:
            refuse += [f"ip daddr {vip} meta l4proto tcp reject with tcp reset",
                       f"ip daddr {vip} reject"]
    return replace_table(TABLE, [chain("vip", "output", dnat),
                                 chain("novip", "output", refuse, kind="filter",
                                       priority=0)])


_DNAT_LINE = re.compile(r"ip daddr (\S+) dnat to (.*)$")
_ADDR = re.compile(r"\d+\.\d+\.\d+\.\d+")
_REFUSE_LINE = re.compile(r"ip daddr (\S+) reject")


def listed_backends(listing: str) -> dict[str, list[str]]:
    """From `nft list table ip shoal` (or our own text): VIP → backends it DNATs to, a
    refused VIP → []. For doctor and convergence checks: compare with `balanced()`."""
    out: dict[str, list[str]] = {}
    for line in listing.splitlines():
        line = line.strip()
        if m := _DNAT_LINE.match(line):
            targets = [a for a in _ADDR.findall(m.group(2))]
            out[m.group(1)] = sorted(set(targets), key=sort_key)
        elif m := _REFUSE_LINE.match(line):
            out.setdefault(m.group(1), [])
    return dict(sorted(out.items(), key=lambda kv: sort_key(kv[0])))


async def apply_ruleset(netns_path: str, text: str) -> None:
    await nsenter(netns_path, "nft", "-f", "-", stdin=text)


async def read_ruleset(netns_path: str, table: str = TABLE) -> str:
    """`nft list table ip <table>` in the namespace; "" when there is no such table."""
    try:
        return await nsenter(netns_path, "nft", "list", "table", "ip", table)
    except subprocess.CalledProcessError as err:
        if "No such file or directory" in (err.stderr or ""):
            return ""
        raise


async def delete_table(netns_path: str, table: str = TABLE) -> None:
    """Remove the table if it is there (`table` first, so a missing one is no error)."""
    await nsenter(netns_path, "nft", "-f", "-",
                  stdin=f"table ip {table}\ndelete table ip {table}\n")


@dataclass
class _Sandbox:
    netns_path: str
    network_ids: list[str]
    applied: str | None = None  # the text last applied (None: not yet, or it failed)


class SandboxBalancer:
    """Keeps every attached sandbox's `table ip shoal` current with the assignments.

    Same shape as the data plane's other extras: `sync(message)` on every assignments
    update, `attach`/`detach` around each sandbox. A table is rewritten only when its text
    changed (`applies` counts the writes); `repair()` rewrites any whose kernel state no
    longer matches (for the periodic reconcile and after a restart)."""

    def __init__(self) -> None:
        self.networks: dict[str, list[cluster_pb2.ServiceRecord]] = {}  # network id → records
        self.applies = 0
        self._sandboxes: dict[str, _Sandbox] = {}
        self._lock = asyncio.Lock()  # one writer per sandbox table at a time

    def set_networks(self, networks: Sequence[cluster_pb2.NetworkState]) -> None:
        self.networks = {n.network.id: list(n.services) for n in networks}

    def ruleset_for(self, key: str) -> str:
        box = self._sandboxes[key]
        services = [s for nid in box.network_ids for s in self.networks.get(nid, [])]
        return sandbox_ruleset(services)

    async def sync(self, message: cluster_pb2.AssignmentsMessage) -> None:
        self.set_networks(message.networks)
        async with self._lock:
            for key in list(self._sandboxes):
                await self._apply(key)

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None:
        """Program the sandbox's table; raises if nft fails (the task must not start
        without its load balancing). Idempotent."""
        async with self._lock:
            ids = [a.network_id for a in attachments]
            old = self._sandboxes.get(key)
            if old is None or (old.netns_path, old.network_ids) != (netns_path, ids):
                self._sandboxes[key] = _Sandbox(netns_path, ids)
            await self._apply(key, strict=True)

    async def detach(self, key: str) -> None:
        # The namespace goes with the sandbox; a /proc/PID path may already name another
        # process's namespace, so the kernel state is left alone.
        async with self._lock:
            self._sandboxes.pop(key, None)

    async def repair(self) -> list[str]:
        """Re-apply every sandbox whose kernel table differs from the wanted one; returns
        the differences found ("<key>: <what>")."""
        found: list[str] = []
        async with self._lock:
            for key, box in list(self._sandboxes.items()):
                want = listed_backends(self.ruleset_for(key))
                try:
                    listing = await read_ruleset(box.netns_path)
                except (OSError, subprocess.CalledProcessError) as err:
                    found.append(f"{key}: cannot read table ip {TABLE}: {err}")
                    continue
                have = listed_backends(listing)
                if not listing:
                    found.append(f"{key}: table ip {TABLE} missing")
                elif have != want:
                    found.append(f"{key}: backends {have} instead of {want}")
                else:
                    continue
                box.applied = None
                await self._apply(key)
        return found

    async def _apply(self, key: str, strict: bool = False) -> None:
        box = self._sandboxes[key]
        text = self.ruleset_for(key)
        if text == box.applied:
            return
        try:
            await apply_ruleset(box.netns_path, text)
        except (OSError, subprocess.CalledProcessError) as err:
            box.applied = None  # retried on the next sync
            if strict:
                raise
            stderr = getattr(err, "stderr", "")
            log.warning("nft in sandbox %s failed: %s %s", key, err, stderr)
            return
        box.applied = text
        self.applies += 1
