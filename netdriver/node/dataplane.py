"""The node's overlay data plane (worker.network.NodeNetwork).

`update` stores the assignments message and wakes the reconcile loop; `run` brings every
network this node is on to its desired state on each update and every 10 s, and removes the
namespaces of networks it is no longer on. `attach` plumbs one sandbox at once (the task's
process must find its interfaces in place). Other parts (resolver, nftables, WireGuard) are
plugged in as "extras" with the same attach/detach shape and a `sync(message)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from netdriver import netlink as nl
from netdriver.node import overlay
from netdriver.node.desired import (
    NetworkDesired,
    Node,
    Sandbox,
    desired_networks,
    netns_name,
    owned_netns,
    veth_peer_name,
    withdrawn,
)
from netdriver.node.netns import list_netns
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)
RECONCILE_INTERVAL = 10.0
ATTACH_WAIT = 30.0  # how long attach waits for a network to appear in an update
# After the first update, how long legs of unknown sandboxes are kept: after a restart the
# worker adopts its running tasks (attach again) within this time.
ADOPT_GRACE = 60.0


class NetworkUnknown(LookupError):
    """attach named a network this node has no (allocated) state for."""


class SandboxGone(LookupError):
    """attach was given a namespace that no longer exists."""


class Extra(Protocol):
    async def sync(self, message: cluster_pb2.AssignmentsMessage) -> None: ...

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None: ...

    async def detach(self, key: str) -> None: ...


class Dataplane:
    def __init__(self, node_id: str, underlay_ip: str, netns_prefix: str,
                 host_netns: str | None = None, underlay_mtu: int | None = None) -> None:
        self.node_id = node_id
        self.underlay_ip = underlay_ip
        self.netns_prefix = netns_prefix
        self.host_netns = host_netns
        self.underlay_mtu = underlay_mtu
        self.extras: list[Extra] = []
        self._message = cluster_pb2.AssignmentsMessage()
        self._synced = self._message  # the last message the extras were given in full
        # None until the first update: with no message yet nothing is known to be unwanted.
        self._first_update: float | None = None
        self.adopt_grace = ADOPT_GRACE
        self._sandboxes: dict[str, Sandbox] = {}
        self._report: dict[str, list[str]] = {}
        self._checks: list[pb.NetworkCheck] = []
        self._checked_ns = 0
        self._lock = asyncio.Lock()        # one kernel change at a time
        self._wake = asyncio.Event()       # set by update: reconcile now
        self._withdraw_wake = asyncio.Event()  # set by update: withdraw what left now
        self._extras_lock = asyncio.Lock()  # a withdrawal never interleaves a full sync
        self._changed = asyncio.Event()    # set (and replaced) by each update

    # -- NodeNetwork --

    def update(self, message: cluster_pb2.AssignmentsMessage) -> None:
        self._message = message
        if self._first_update is None:
            self._first_update = time.monotonic()
        self._wake.set()
        self._withdraw_wake.set()
        # Wake attach calls waiting for a network; later ones wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None:
        wanted = [a for a in attachments if a.network_id]
        await self._wait_known({a.network_id for a in wanted})
        inode = await asyncio.to_thread(overlay.netns_inode, netns_path)
        if inode == 0:
            raise SandboxGone(f"node {self.node_id}: sandbox {key}: namespace {netns_path} "
                              "is gone (did its container exit?)")
        async with self._lock:
            self._sandboxes[key] = Sandbox(netns_path, tuple(wanted), inode)
            desired = await self._desired()
            for attachment in wanted:
                diffs = await asyncio.to_thread(
                    overlay.reconcile_network, desired[attachment.network_id],
                    self.host_netns, key)
                if diffs:
                    log.info("attach %s on %s: %s", key, attachment.network_id, diffs)
        for extra in self.extras:
            await extra.attach(key, netns_path, attachments)

    async def detach(self, key: str) -> None:
        for extra in self.extras:
            await extra.detach(key)
        async with self._lock:
            box = self._sandboxes.pop(key, None)
            if box is None:
                return
            for attachment in box.attachments:
                await asyncio.to_thread(
                    overlay.remove_veth, netns_name(self.netns_prefix, attachment.network_id),
                    veth_peer_name(key))
        self._wake.set()  # the network may no longer be needed on this node

    # -- the reconcile loop --

    async def run(self) -> None:
        # Withdrawals run beside the reconcile: a round can take a while (it waits for a
        # sandbox being plumbed, and walks every network), and a leaving task is stopped
        # BACKEND_DRAIN after it was told to, whatever this node is doing.
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._withdrawals(), name="withdrawals")
            tg.create_task(self._reconciles(), name="reconciles")

    async def _withdrawals(self) -> None:
        while True:
            await self._withdraw_wake.wait()
            self._withdraw_wake.clear()
            await self._withdraw()

    async def _reconciles(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set, and the loop would never stop.
            try:
                async with asyncio.timeout(RECONCILE_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:  # logged and retried on the next round, never fatal
                log.exception("overlay reconcile failed")
            await self._sync_extras()

    async def reconcile(self) -> dict[str, list[str]]:
        """One round over every network; the differences found per network id."""
        if self._first_update is None:
            return {}
        prune = time.monotonic() - self._first_update >= self.adopt_grace
        async with self._lock:
            desired = await self._desired()
            report: dict[str, list[str]] = {}
            checks = []
            for network_id, net in desired.items():
                found = await asyncio.to_thread(overlay.found_counts, net)
                report[network_id] = await self._reconcile_one(net, prune)
                checks.append(pb.NetworkCheck(network_id=network_id,
                                              wanted=overlay.wanted_counts(net), found=found,
                                              differences=report[network_id]))
            for name in await asyncio.to_thread(self._unwanted, desired):
                await asyncio.to_thread(overlay.remove_network, name)
                report[name] = [f"namespace {name}: not wanted, removed"]
            self._report, self._checks, self._checked_ns = report, checks, time.time_ns()
            return report

    def last_report(self) -> list[tuple[str, list[str]]]:
        """(network id, differences) of the last round; a removed network's entry is keyed
        by its namespace name."""
        return sorted(self._report.items())

    def network_report(self) -> pb.NetworkReport:
        """The last round as the node reports it (`network doctor`); the WireGuard part
        fills in peers and tunnel_error."""
        return pb.NetworkReport(checked_ns=self._checked_ns, networks=self._checks)

    # -- helpers --

    async def _reconcile_one(self, net: NetworkDesired, prune: bool) -> list[str]:
        try:
            diffs = await asyncio.to_thread(overlay.reconcile_network, net, self.host_netns,
                                            None, prune)
        except Exception as err:  # one broken network must not stop the others
            log.exception("overlay reconcile of %s failed", net.network_id)
            diffs = [f"reconcile failed: {err}"]
        return [*net.problems, *diffs]

    def _unwanted(self, desired: dict[str, NetworkDesired]) -> list[str]:
        keep = {net.netns for net in desired.values()}
        return [name for name in owned_netns(list_netns(), self.netns_prefix)
                if name not in keep]

    async def _desired(self) -> dict[str, NetworkDesired]:
        if self.underlay_mtu is None:
            self.underlay_mtu = await asyncio.to_thread(
                nl.mtu_of_address, self.host_netns, self.underlay_ip)
        node = Node(self.node_id, self.underlay_ip, self.underlay_mtu, self.netns_prefix)
        return desired_networks(node, self._message, self._sandboxes)

    def _known(self, network_ids: set[str]) -> bool:
        known = {state.network.id for state in self._message.networks
                 if state.network.ipam and state.network.ipam[0].gateway}
        return network_ids <= known

    async def _wait_known(self, network_ids: set[str]) -> None:
        deadline = asyncio.get_running_loop().time() + ATTACH_WAIT
        while not self._known(network_ids):
            changed = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                missing = sorted(network_ids - {s.network.id for s in self._message.networks})
                raise NetworkUnknown(
                    f"node {self.node_id}: networks {missing or sorted(network_ids)} not in "
                    "its assignments (or not allocated yet); the manager allocates them "
                    "before the task is assigned") from None

    async def _withdraw(self) -> None:
        """What the new assignments take away (a leaving task's backend and names), given
        to the extras before the kernel reconcile adds anything."""
        async with self._extras_lock:
            if self._synced is self._message or not self._synced.networks:
                return  # nothing new, or nothing given yet that could be taken away
            await self._give_extras(withdrawn(self._synced, self._message))

    async def _sync_extras(self) -> None:
        async with self._extras_lock:
            self._synced = self._message
            await self._give_extras(self._synced)

    async def _give_extras(self, message: cluster_pb2.AssignmentsMessage) -> None:
        for extra in self.extras:
            try:
                await extra.sync(message)
            except Exception:
                log.exception("%s sync failed", type(extra).__name__)
