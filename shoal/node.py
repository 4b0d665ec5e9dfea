"""The composition root: one Node per shoald. It owns the swarm membership on disk and runs
the worker role (agent) always and the manager role when its certificate says so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

import pki
from manager.ca.authority import RootCA
from manager.errors import NotFound, Unavailable
from manager.grpcapi import role_name
from manager.manager import Manager
from manager.raft.guarded import RaftFailed
from netdriver.node.plane import NodePlane
from pki import sealing
from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb
from shoal import joining, newcluster, renewal
from shoal.errors import (
    AlreadyInSwarm,
    InvalidUnlockKey,
    JoinFailed,
    LeaveRefused,
    NotAManager,
    NotInSwarm,
    NotLocked,
    SwarmLocked,
    leave_refusal,
    rpc_message,
)
from shoal.metrics.registry import NodeMetrics
from shoal.newcluster import InitRequest, RestoreRequest
from shoal.nodestate import Certificates, DataRoot, SwarmState
from shoal.roles import ManagerRole, cluster_kek
from shoal.services import ServiceGroup
from shoal.worker_role import NetworkOptions, WorkerRole, make_plane
from worker.agent import Agent
from worker.executor import make_executor
from worker.executor.base import Executor
from worker.executor.docker.executor import DockerExecutor
from worker.worker import Worker, remove_node_containers

log = logging.getLogger(__name__)


class Node:
    def __init__(self, data_root: str, hostname: str, executor: Executor | None = None,
                 network: NetworkOptions | None = None) -> None:
        self.data = DataRoot(data_root)
        self.network_options = network or NetworkOptions()
        self.plane: NodePlane | None = None  # set when the worker role starts, kept after
        self.hostname = hostname
        self.executor = executor if executor is not None else make_executor()
        self.state: SwarmState | None = None
        self.certs: Certificates | None = None
        self.manager_role: ManagerRole | None = None
        self.worker_role: WorkerRole | None = None
        self._role_change: asyncio.Task[None] | None = None
        # Why renewing the certificate fails (reported in heartbeats: `node inspect`).
        self.renewal_problem = ""
        self._lock = asyncio.Lock()  # one membership change at a time
        # A manager whose keys are sealed (autolock) waits for `swarm unlock` to start.
        self.locked = False
        # Told (from Raft's thread) when this node's Raft stops; the daemon then exits.
        self.on_fatal: Callable[[RaftFailed], None] | None = None
        self.metrics = NodeMetrics()  # this node's registry: GET /metrics
        self.metrics.watch(self)

    @property
    def worker(self) -> Worker | None:
        return self.worker_role.worker if self.worker_role else None

    @property
    def agent(self) -> Agent | None:
        return self.worker_role.agent if self.worker_role else None

    @property
    def services(self) -> ServiceGroup | None:
        """The worker role's services: agent, worker, certificate renewal, data plane."""
        return self.worker_role.services if self.worker_role else None

    # -- what the API asks --

    @property
    def local_state(self) -> str:
        if self.locked:
            return "locked"
        return "active" if self.state else "inactive"

    def identity(self) -> pki.Identity:
        assert self.certs is not None
        return pki.identity_of(self.certs.cert_pem)

    def manager(self) -> Manager:
        """The manager, or the error a user sees on a node that isn't one, or on a manager
        that is not in touch with a majority."""
        if self.locked:
            raise SwarmLocked()
        if self.state is None:
            raise NotInSwarm()
        if self.manager_role is None:
            raise NotAManager(self.state.managers)
        manager = self.manager_role.manager
        manager.require_quorum()  # a cut-off manager answers 503 at once, never stale data
        return manager

    def leads(self) -> bool:
        """Is this node the Raft leader now? Cheap and safe on any thread."""
        role = self.manager_role
        return role is not None and role.manager.is_leader()

    def node_id(self) -> str:
        if self.state is None:
            raise NotInSwarm()
        return self.state.node_id

    async def local_container(self, ref: str) -> tuple[str, str]:
        """A running container of this node's engine: its ID and network namespace."""
        if not isinstance(self.executor, DockerExecutor):
            raise NotFound("this node runs no container engine")
        found = await self.executor.container_netns(ref) if ref else None
        if found is None:
            raise NotFound(f"container {ref or '(none given)'} is not running on this node's "
                           "engine: start it first (network connect attaches a running "
                           "container of the node whose API you call)")
        return found

    # -- lifecycle --

    async def start(self) -> None:
        self.state = self.data.load_state()
        if self.state is None:
            return
        if self.data.is_sealed() and self.data.kek is None:
            self.locked = True
            log.warning("this manager's keys are sealed (autolock): it does nothing until "
                        "`docker swarm unlock` gives the unlock key")
            return
        await self._start_roles()

    async def _start_roles(self) -> None:
        assert self.state is not None
        self.certs = self.data.load_certs()
        if self.identity().role == pb.MANAGER:
            peers = self.state.raft_peers or [self.state.raft_addr]
            await self._start_manager(peers, *self.data.load_raft_keys())
        await self._start_worker()

    async def unlock(self, key_text: str) -> None:
        """`swarm unlock`: open the sealed keys with the key the user gave, then start."""
        async with self._lock:
            if not self.locked:
                raise NotLocked()
            try:
                kek = sealing.derive_kek(sealing.parse_unlock_key(key_text))
                self.data.kek = kek
                self.data.load_certs()
                self.data.load_raft_keys()
            except sealing.WrongKey:
                self.data.kek = None
                raise InvalidUnlockKey() from None
            self.locked = False
            await self._start_roles()

    async def stop(self) -> None:
        await self._stop_worker()
        await self._stop_manager()

    # -- swarm init / join / leave --

    async def init(self, req: InitRequest) -> str:
        async with self._lock:
            if self.state is not None:
                raise AlreadyInSwarm()
            root, cluster = newcluster.new_cluster(req)
            state, role = await self._first_manager(root, cluster, req)
            await role.manager.put(cluster, newcluster.first_node(state, self.hostname,
                                                                  req.availability),
                                   newcluster.ingress_network())
            await self._start_worker()
            return state.node_id

    async def _first_manager(self, root: RootCA, cluster: pb.Cluster,
                             req: InitRequest | RestoreRequest,
                             restore: bytes | None = None) -> tuple[SwarmState, ManagerRole]:
        """This host as the only manager of a new cluster, once it leads."""
        self.data.kek = cluster_kek(cluster)  # sealed from the first write on
        state, certs = newcluster.first_manager(root, cluster, req.advertise_ip,
                                                req.listen_ip, req.port)
        self._adopt(state, certs)
        role = await self._start_manager([state.raft_addr], cluster.raft_secret,
                                         cluster.raft_dek, restore=restore)
        await role.wait_leader(15.0)
        return state, role

    async def join(self, req: joining.JoinRequest) -> None:
        async with self._lock:
            if self.state is not None:
                raise AlreadyInSwarm()
            joined = await joining.join(req, self.hostname)
            state = SwarmState(joined.node_id, joined.cluster_id, req.advertise_ip,
                               req.listen_ip, req.port, managers=[req.remote])
            self._adopt(state, joined.certs)
            if joined.role == pb.MANAGER:
                try:
                    await self._join_raft(req.remote)
                except (grpc.aio.AioRpcError, TimeoutError) as err:
                    await self._stop_manager()
                    self.data.wipe()
                    self.state = self.certs = None
                    raise JoinFailed(f"could not join the managers' Raft group via "
                                     f"{req.remote}: {rpc_message(err)}") from err
            await self._start_worker()

    async def leave(self, force: bool) -> None:
        async with self._lock:
            if self.state is None:
                raise NotInSwarm()
            if self.locked:
                if not force:
                    raise LeaveRefused("This node is locked (autolock): unlock it first "
                                       "(`docker swarm unlock`), or use --force to leave "
                                       "without it")
                self.locked = False
            elif self.manager_role is not None:
                if not force:
                    replica = self.manager_role.replica
                    members = replica.members()
                    reachable = sum(1 for m in members if replica.is_connected(m))
                    raise LeaveRefused(leave_refusal(reachable, len(members)))
                try:
                    await self.manager_role.replica.remove_member(self.state.raft_addr, 3.0)
                except Unavailable as err:  # --force: leave anyway, as Docker does
                    log.warning("leaving with --force: this manager is still a Raft member "
                                "the others count (remove it with `docker node rm`): %s", err)
            await self.stop()
            await remove_node_containers(self.executor, self.state.node_id)
            self.data.wipe()
            self.data.kek = None
            self.state = None
            self.certs = None

    async def restore(self, req: RestoreRequest) -> str:
        """`shoald --restore`: on an empty data root, start a one-manager cluster from a
        backup's store (an opened StoreSnapshot), as Docker's restore does (the swarm
        directory copied back, then `swarm init --force-new-cluster`). The cluster keeps
        its ID, root CA and join tokens, so its workers' certificates stay valid and the
        tokens still join; this host is a new manager node; the backup's managers stay in
        the store as down workers (`docker node rm` them), its workers as they were, until
        they reconnect or are marked down."""
        async with self._lock:
            if self.state is not None:
                raise AlreadyInSwarm()
            snapshot, root, cluster = newcluster.restored_cluster(req.snapshot)
            state, role = await self._first_manager(root, cluster, req, restore=snapshot)
            await newcluster.leave_behind(role, keep=state.node_id)
            await role.manager.put(newcluster.first_node(state, self.hostname, pb.ACTIVE))
            await role.replica.dump()  # until dumped, the restored store is only in memory
            await self._start_worker()
            return state.node_id

    async def force_new_cluster(self) -> str:
        """`swarm init --force-new-cluster` on a manager (or `shoald --force-new-cluster`):
        recover from a lost quorum. This manager becomes the only Raft member, starting from
        the store it holds (services, networks, nodes...); the other managers become
        workers in the store, to be removed (`docker node rm`) or joined again."""
        async with self._lock:
            if self.locked:
                raise SwarmLocked()
            if self.state is None:
                raise NotInSwarm()
            role = self.manager_role
            if role is None:
                raise NotAManager(self.state.managers)
            applied = await newcluster.settled_store(role)
            secret, dek = self.data.load_raft_keys()
            await self._stop_manager()
            snapshot = newcluster.forced_snapshot(role.store, self.data.raft_dir, applied, dek)
            state = self.state
            state.raft_peers, state.managers = [state.raft_addr], [state.addr]
            self.data.save_state(state)
            role = await self._start_manager([state.raft_addr], secret, dek, restore=snapshot)
            await role.wait_leader(15.0)
            await newcluster.leave_behind(role, keep=state.node_id)
            await role.replica.dump()
            return state.node_id

    # -- roles --

    def _adopt(self, state: SwarmState, certs: Certificates) -> None:
        self.data.save_certs(certs)
        self.data.save_state(state)
        self.state, self.certs = state, certs

    def _current_certs(self) -> Certificates:
        assert self.certs is not None
        return self.certs

    async def _start_manager(self, peers: list[str], secret: str, dek: bytes | None,
                             restore: bytes | None = None) -> ManagerRole:
        assert self.state is not None
        role = ManagerRole(self.data, self.state, self._current_certs, peers, secret, dek,
                           on_fatal=self.on_fatal, restore=restore,
                           metrics=self.metrics.manager)
        await role.start()
        self.manager_role = role
        return role

    async def _stop_manager(self) -> None:
        role, self.manager_role = self.manager_role, None
        if role is not None:
            await role.stop()

    async def _join_raft(self, via: str) -> None:
        assert self.state is not None
        state = self.state
        async with self._channel(via) as channel:
            resp = await cluster_pb2_grpc.RaftMembershipStub(channel).Join(
                cluster_pb2.JoinRaftRequest(raft_addr=state.raft_addr, addr=state.addr),
                timeout=20.0)
        state.raft_peers = list(resp.members)
        self.data.save_state(state)
        role = await self._start_manager(list(resp.members), resp.raft_secret,
                                         resp.raft_dek or None)
        await role.wait_store(lambda: role.store.get(pb.Node, state.node_id) is not None, 30.0)

    def _channel(self, addr: str) -> grpc.aio.Channel:
        certs = self._current_certs()
        creds = pki.channel_credentials(certs.ca_pem, certs.key_pem, certs.cert_pem)
        return grpc.aio.secure_channel(addr, creds, options=pki.channel_options())

    async def _start_worker(self) -> None:
        assert self.state is not None
        self.plane = make_plane(self.executor, self.state, self.data.path, self.network_options)
        role = WorkerRole(self.state, self.hostname, self.executor, self.plane,
                          self._current_certs, self._on_session_message,
                          lambda: self.renewal_problem)
        self.worker_role = role
        await role.start(self._renew_loop)

    async def _stop_worker(self) -> None:
        role, self.worker_role = self.worker_role, None
        if role is not None:
            await role.stop()

    async def _on_session_message(self, msg: cluster_pb2.SessionMessage) -> None:
        state = self.state
        if state is None:
            return
        managers = sorted(m.addr for m in msg.managers if m.addr)
        if managers and managers != state.managers:
            state.managers = managers
            self.data.save_state(state)
        changing = self._role_change is not None and not self._role_change.done()
        if msg.desired_role != self.identity().role and not changing and self.services:
            self._role_change = self.services.spawn("role change",
                                                    self._change_role(msg.desired_role))

    async def _change_role(self, role: int) -> None:
        async with self._lock:
            if self.state is None or self.identity().role == role:
                return
            await self._renew()
            if role == pb.MANAGER and self.manager_role is None:
                via = self.agent.connected_to if self.agent else None
                await self._join_raft(via or self.state.managers[0])
            elif role == pb.WORKER and self.manager_role is not None:
                await self._stop_manager()
                self.data.kek = None  # autolock is for managers: a worker's key is in clear
                self.data.save_certs(self._current_certs())
                self.data.remove_raft()
                self.state.raft_peers = []
                self.data.save_state(self.state)
            log.info("node %s is now a %s", self.state.node_id, role_name(role))

    # -- certificate renewal --

    async def _renew_loop(self) -> None:
        async def renew() -> None:
            async with self._lock:
                await self._renew()

        def report(problem: str) -> None:
            self.renewal_problem = problem

        await renewal.renew_loop(self.identity, renew, report)

    async def _renew(self) -> None:
        assert self.state is not None and self.certs is not None
        via = (self.agent.connected_to if self.agent else None) or self.state.managers[0]
        async with self._channel(via) as channel:
            certs, role = await renewal.new_certificate(channel, self.certs.ca_pem)
        self._adopt(self.state, certs)
        log.info("renewed the node certificate (role %s, valid until %s)",
                 role_name(role), self.identity().not_after)
