"""The composition root: one Node per shoald. It owns the swarm membership on disk and runs
the worker role (agent) always and the manager role when its certificate says so."""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

import pki
from manager import backup
from manager.ca.authority import BACKDATE, RootCA
from manager.ca.server import cert_expiry
from manager.errors import NotFound, Unavailable
from manager.grpcapi import role_name
from manager.identity import new_id
from manager.manager import Manager
from manager.raft.guarded import RaftFailed
from manager.raft.journal import set_aside
from manager.raft.replica import apply_logged_tail
from netdriver.node.plane import NodePlane
from pki import sealing
from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb
from shoal import joining
from shoal.description import describe
from shoal.errors import (
    AlreadyInSwarm,
    InvalidUnlockKey,
    JoinFailed,
    LeaveRefused,
    NotAManager,
    NotInSwarm,
    NotLocked,
    SwarmLocked,
)
from shoal.metrics.registry import NodeMetrics
from shoal.nodestate import Certificates, DataRoot, SwarmState
from shoal.roles import ManagerRole, cluster_kek
from shoal.services import Service, ServiceGroup
from worker.agent import Agent, AgentConfig
from worker.executor import make_executor
from worker.executor.base import Executor
from worker.executor.docker.executor import DockerExecutor
from worker.worker import Worker, remove_node_containers

log = logging.getLogger(__name__)

RENEW_RETRY = 5.0  # seconds between attempts to renew the certificate after a failure


@dataclass
class NetworkOptions:
    """How this node's data plane is set up (shoald flags)."""
    netns_prefix: str = "shl-n"
    dns_upstreams: list[str] | None = None  # None: the host's resolv.conf
    wg_port: int = 51820
    key_rotation: float | None = None  # seconds between WireGuard key rotations


@dataclass
class RestoreRequest:
    snapshot: bytes  # the backup's StoreSnapshot, opened (manager/backup.py)
    advertise_ip: str
    listen_ip: str
    port: int


@dataclass
class InitRequest:
    advertise_ip: str
    listen_ip: str
    port: int
    spec: pb.ClusterSpec
    availability: int = pb.ACTIVE
    default_addr_pool: list[str] = field(default_factory=list)
    subnet_size: int = 0
    data_path_port: int = 0


class Node:
    def __init__(self, data_root: str, hostname: str, executor: Executor | None = None,
                 network: NetworkOptions | None = None) -> None:
        self.data = DataRoot(data_root)
        self.network_options = network or NetworkOptions()
        self.plane: NodePlane | None = None
        self.hostname = hostname
        self.executor = executor if executor is not None else make_executor()
        self.worker: Worker | None = None
        self.state: SwarmState | None = None
        self.certs: Certificates | None = None
        self.manager_role: ManagerRole | None = None
        self.agent: Agent | None = None
        self.services: ServiceGroup | None = None  # agent, worker, certificate renewal
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
            root = RootCA.create()
            cluster = pb.Cluster(id=new_id(), spec=req.spec, root_ca=root.to_proto(),
                                 raft_secret=secrets.token_urlsafe(32),
                                 default_addr_pool=req.default_addr_pool,
                                 subnet_size=req.subnet_size,
                                 data_path_port=req.data_path_port,
                                 raft_dek=sealing.new_key())
            if req.spec.encryption_config.auto_lock_managers:
                cluster.unlock_key = sealing.new_key()
            self.data.kek = cluster_kek(cluster)  # sealed from the first write on
            cluster.spec.annotations.name = "default"
            node_id = new_id()
            key = pki.new_key()
            cert = root.sign_node_certificate(pki.make_csr(key), node_id, pb.MANAGER, cluster.id,
                                              cert_expiry(cluster))
            state = SwarmState(node_id, cluster.id, req.advertise_ip, req.listen_ip, req.port)
            state.managers = [state.addr]
            state.raft_peers = [state.raft_addr]
            self._adopt(state, Certificates(pki.key_pem(key), cert, root.cert_pem))
            role = await self._start_manager([state.raft_addr], cluster.raft_secret,
                                             cluster.raft_dek)
            await role.wait_leader(15.0)
            await role.manager.put(cluster, self._first_node(state, req.availability),
                                   ingress_network())
            await self._start_worker()
            return node_id

    def _first_node(self, state: SwarmState, availability: int) -> pb.Node:
        node = pb.Node(id=state.node_id, role=pb.MANAGER)
        node.spec.desired_role = pb.MANAGER
        node.spec.availability = availability  # type: ignore[assignment]
        node.description.CopyFrom(describe(self.hostname))
        node.status.addr = state.advertise_ip
        node.manager_status.addr = state.addr
        node.manager_status.raft_addr = state.raft_addr
        node.manager_status.leader = True
        node.manager_status.reachability = pb.REACHABLE
        return node

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
                                     f"{req.remote}: {_rpc_message(err)}") from err
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
            snapshot = backup.for_new_cluster(req.snapshot, secrets.token_urlsafe(32))
            cluster = backup.cluster_of(snapshot)
            root = RootCA.from_pem(cluster.root_ca.ca_cert_pem, cluster.root_ca.ca_key_pem)
            self.data.kek = cluster_kek(cluster)  # sealed from the first write on
            node_id, key = new_id(), pki.new_key()
            cert = root.sign_node_certificate(pki.make_csr(key), node_id, pb.MANAGER, cluster.id,
                                              cert_expiry(cluster))
            state = SwarmState(node_id, cluster.id, req.advertise_ip, req.listen_ip, req.port)
            state.managers, state.raft_peers = [state.addr], [state.raft_addr]
            self._adopt(state, Certificates(pki.key_pem(key), cert, root.cert_pem))
            role = await self._start_manager([state.raft_addr], cluster.raft_secret,
                                             cluster.raft_dek, restore=snapshot)
            await role.wait_leader(15.0)
            for node in role.store.list(pb.Node):
                if node.role == pb.MANAGER:
                    await role.manager.modify(pb.Node, node.id, _lost_manager)
            await role.manager.put(self._first_node(state, pb.ACTIVE))
            await role.replica.dump()  # until dumped, the restored store is only in memory
            await self._start_worker()
            return node_id

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
            try:  # a manager just started may not have applied its own log yet
                old = role
                await old.wait_store(lambda: old.replica.applied_all_committed() and
                                     bool(old.store.list(pb.Cluster)), 30.0)
            except TimeoutError:
                raise Unavailable("can't force a new cluster: this manager's store did not "
                                  "load its Raft log within 30 s; nothing was changed") from None
            applied = int(role.replica.status()["last_applied"])
            secret, dek = self.data.load_raft_keys()
            await self._stop_manager()
            tail = apply_logged_tail(role.store, self.data.raft_dir, applied, dek)
            log.warning("forcing a new cluster: kept %d logged entries beyond the last "
                        "known commit", tail)
            snapshot = role.store.snapshot()
            aside, _ = set_aside(self.data.raft_dir)
            log.warning("forcing a new cluster: the old Raft files are in %s", aside)
            state = self.state
            state.raft_peers, state.managers = [state.raft_addr], [state.addr]
            self.data.save_state(state)
            role = await self._start_manager([state.raft_addr], secret, dek, restore=snapshot)
            await role.wait_leader(15.0)
            for node in role.store.list(pb.Node):
                if node.id != state.node_id and node.role == pb.MANAGER:
                    await role.manager.modify(pb.Node, node.id, _lost_manager)
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
        certs = self._current_certs
        plane = self.plane = self._make_plane()
        worker = self.worker = Worker(self.state.node_id, self.executor, network=plane)
        config = AgentConfig(
            addr=self.state.advertise_ip,
            credentials=lambda: pki.channel_credentials(
                certs().ca_pem, certs().key_pem, certs().cert_pem),
            channel_options=pki.channel_options(),
            description=self._describe,
            on_message=self._on_session_message,
            worker=worker,
            problems=lambda: self.renewal_problem,
            network=plane.heartbeat if plane is not None else lambda _: None,
        )
        self.agent = agent = Agent(config, self.state.managers)
        if plane is not None:
            plane.on_tunnel_change = agent.beat_now

        async def run() -> None:
            await worker.wait_engine(3.0)  # so the first session reports the engine version
            await agent.run()

        self.services = ServiceGroup("node services")
        services: dict[str, Service] = {"worker": worker.run, "agent": run,
                                        "certificate renewal": self._renew_loop}
        if plane is not None:
            services["data plane"] = plane.run
        await self.services.start(services)

    def _make_plane(self) -> NodePlane | None:
        """The data plane, for an executor that runs sandboxes (the fake one runs none)."""
        if not isinstance(self.executor, DockerExecutor):
            return None
        assert self.state is not None
        opts = self.network_options
        plane = NodePlane(self.state.node_id, self.state.advertise_ip, opts.netns_prefix,
                          self.data.path, upstreams=opts.dns_upstreams, wg_port=opts.wg_port,
                          rotate_interval=opts.key_rotation,
                          container_netns=self.executor.container_netns)
        self.executor.network = plane
        return plane

    def _describe(self) -> pb.NodeDescription:
        engine = self.worker.engine if self.worker else None
        if engine is None:
            return describe(self.hostname)
        return describe(self.hostname, engine.version, engine.labels)

    async def _stop_worker(self) -> None:
        services, self.services = self.services, None
        if services is not None:
            await services.stop()
        self.agent = None
        if self.worker is not None:
            await self.worker.stop()  # containers keep running: a restart adopts them
            self.worker = None

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
        failing_since: datetime.datetime | None = None
        while True:
            ident = self.identity()
            # Certificates are back-dated against clock skew; count from when it was issued.
            issued = ident.not_before + BACKDATE
            lifetime = (ident.not_after - issued).total_seconds()
            renew_at = issued + datetime.timedelta(seconds=lifetime * random.uniform(0.5, 0.8))
            delay = (renew_at - datetime.datetime.now(datetime.UTC)).total_seconds()
            await asyncio.sleep(max(delay, 1.0))
            try:
                async with self._lock:
                    await self._renew()
                self.renewal_problem, failing_since = "", None
            except (grpc.aio.AioRpcError, Unavailable) as err:
                failing_since = failing_since or datetime.datetime.now(datetime.UTC)
                self.renewal_problem = renewal_problem(failing_since, ident.not_after,
                                                       _rpc_message(err))
                log.warning("%s; retrying in %g s", self.renewal_problem, RENEW_RETRY)
                await asyncio.sleep(RENEW_RETRY)

    async def _renew(self) -> None:
        assert self.state is not None and self.certs is not None
        key = pki.new_key()
        via = (self.agent.connected_to if self.agent else None) or self.state.managers[0]
        async with self._channel(via) as channel:
            resp = await cluster_pb2_grpc.NodeCAStub(channel).RenewCertificate(
                cluster_pb2.RenewCertificateRequest(csr_pem=pki.make_csr(key)), timeout=10.0)
        self._adopt(self.state, Certificates(pki.key_pem(key), resp.cert_pem, self.certs.ca_pem))
        log.info("renewed the node certificate (role %s, valid until %s)",
                 role_name(resp.role), self.identity().not_after)


def leave_refusal(reachable: int, members: int) -> str:
    """Docker's words for `swarm leave` without --force on a manager (moby's Leave)."""
    msg = ("You are attempting to leave the swarm on a node that is participating as a "
           "manager. ")
    if members <= 1:
        return msg + ("Removing the last manager erases all current state of the swarm. Use "
                      "`--force` to ignore this message. ")
    msg += f"Removing this node leaves {reachable - 1} managers out of {members}. "
    if reachable - 1 <= members // 2:
        msg += ("Removing this node would make the swarm lose its quorum: without a Raft "
                "quorum your swarm will be inaccessible. The only way to restore a swarm that "
                "has lost consensus is to reinitialize it with `--force-new-cluster`. ")
    return msg + "Use `--force` to suppress this message. "


def _lost_manager(node: pb.Node) -> bool:
    """A manager left behind by a forced new cluster: no longer a Raft member, so a worker
    (and down until it connects again)."""
    node.role = pb.WORKER
    node.spec.desired_role = pb.WORKER
    node.ClearField("manager_status")
    node.status.state = pb.NODE_DOWN
    node.status.message = "left behind by a forced new cluster"
    return True


def ingress_network() -> pb.Network:
    """The routing mesh's network, made with the swarm (as Docker's `ingress`); the
    allocator gives it the first subnet of the pool."""
    spec = pb.NetworkSpec(driver="overlay", ingress=True)
    spec.annotations.name = "ingress"
    return pb.Network(id=new_id(), spec=spec)


def renewal_problem(since: datetime.datetime, not_after: datetime.datetime, error: str) -> str:
    """What `node inspect` shows while renewal fails: since when, why, and the deadline."""
    return (f"certificate renewal failing since {since:%Y-%m-%dT%H:%M:%SZ} ({error}); the "
            f"node certificate expires at {not_after:%Y-%m-%dT%H:%M:%SZ}")


def _rpc_message(err: Exception) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name.lower()}: {err.details()}"
    return str(err) or type(err).__name__
