"""Starting and stopping the manager role of a node: Raft replica, controllers and the two
gRPC listeners (cluster port with mTLS; bootstrap port, server TLS only, for joins)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

import pki
from manager.allocator.allocator import Allocator
from manager.allocator.network_reaper import NetworkReaper
from manager.ca.server import CAServicer, NodeCAServicer
from manager.dispatcher.dispatcher import Dispatcher
from manager.logbroker.broker import LogBroker
from manager.logbroker.server import LogBrokerServicer, LogsServicer
from manager.manager import Manager, ManagerAddrs
from manager.metrics import ManagerInstruments
from manager.orchestrator.orchestrators import orchestrators
from manager.raft.guarded import RaftFailed
from manager.raft.replica import RaftReplica
from manager.raftapi import RaftMembershipServicer
from manager.roles import RoleController
from manager.runtime import LeaderRuntime
from manager.scheduler.scheduler import Scheduler
from manager.store.memory import MemoryStore
from pki import sealing
from proto import cluster_pb2_grpc, store_pb2
from proto import objects_pb2 as pb
from shoal.nodestate import Certificates, DataRoot, SwarmState
from shoal.services import ServiceGroup

log = logging.getLogger(__name__)

PEERS_CHECK = 0.5  # seconds between looks at the Raft membership, to keep it on disk
# gRPC's asyncio server takes in one new call per turn or two of the event loop, so on a
# busy leader calls queue there (and are CANCELLED after 30 s) while their handlers are
# cheap: with a full loop, 1 server took in 9.5 calls/s and 4 took 23
# (bench/grpc_accept.py). Several servers share the port (SO_REUSEPORT), the nodes'
# connections spread over them, and each takes in its own.
ACCEPTORS = 4


def _cert_config(certs: Certificates) -> grpc.ServerCertificateConfiguration:
    chain = certs.cert_pem + certs.ca_pem  # the bootstrap port shows the root to joiners
    return grpc.ssl_server_certificate_configuration([(certs.key_pem, chain)],
                                                     root_certificates=certs.ca_pem)


def _server_credentials(current: Callable[[], Certificates],
                        require_client_auth: bool) -> grpc.ServerCredentials:
    """Credentials that pick up a renewed certificate at the next handshake."""
    served = [current()]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        latest = current()
        if latest is served[0]:
            return None
        served[0] = latest
        return _cert_config(latest)

    return grpc.dynamic_ssl_server_credentials(_cert_config(served[0]), fetch,  # type: ignore[arg-type]
                                               require_client_authentication=require_client_auth)


def cluster_kek(cluster: pb.Cluster) -> bytes | None:
    """The key this manager's keys at rest must be sealed with (None: in clear)."""
    if cluster.spec.encryption_config.auto_lock_managers and cluster.unlock_key:
        return sealing.derive_kek(cluster.unlock_key)
    return None


class ManagerRole:
    def __init__(self, data: DataRoot, state: SwarmState, certs: Callable[[], Certificates],
                 peers: list[str], secret: str, dek: bytes | None,
                 on_fatal: Callable[[RaftFailed], None] | None = None,
                 restore: bytes | None = None,
                 metrics: ManagerInstruments | None = None) -> None:
        """`restore`: a store snapshot to start from (a forced new cluster); `metrics`: the
        node's instruments (store writes, scheduler decisions)."""
        data.save_raft_keys(secret, dek or b"")
        self._secret, self._dek = secret, dek or b""
        self.store = MemoryStore()
        if restore is not None:
            # A new Raft group counts its terms from 1 again, and a leader's epoch is its
            # term: the store's leadership fence starts over with it.
            snap = store_pb2.StoreSnapshot.FromString(restore)
            snap.epoch = 0
            self.store.restore(snap.SerializeToString())
        self.replica = RaftReplica(self.store, state.raft_addr, peers, secret, data.raft_dir,
                                   on_fatal=on_fatal, dek=dek or None)
        self.manager = Manager(state.node_id, ManagerAddrs(state.addr, state.raft_addr),
                               self.store, self.replica, metrics)
        self.dispatcher = Dispatcher(self.manager)
        self.logbroker = LogBroker(self.manager)
        # Every leader-only controller, in one list: the runtime runs them while this
        # manager leads (manager/runtime.py).
        self.runtime = LeaderRuntime(self.manager, [
            self.dispatcher.liveness, RoleController(self.manager),
            *orchestrators(self.manager), Allocator(self.manager), NetworkReaper(self.manager),
            Scheduler(self.manager),
        ])
        self._certs = certs
        self._data = data
        self._state = state
        self._servers: list[grpc.aio.Server] = []
        self.services = ServiceGroup("manager services")

    async def start(self) -> None:
        clusters = [self._cluster_server() for _ in range(ACCEPTORS)]
        bootstrap = grpc.aio.server(options=pki.server_options())
        cluster_pb2_grpc.add_CAServicer_to_server(CAServicer(self.manager), bootstrap)
        bootstrap.add_secure_port(f"{self._state.listen_ip}:{self._state.port + 1}",
                                  _server_credentials(self._certs, False))
        for server in (*clusters, bootstrap):
            await server.start()
            self._servers.append(server)
        await self.services.start({"leader runtime": self.runtime.run,
                                   "raft peers": self._keep_peers})

    def _cluster_server(self) -> grpc.aio.Server:
        cluster = grpc.aio.server(options=[*pki.server_options(), ("grpc.so_reuseport", 1)])
        cluster_pb2_grpc.add_DispatcherServicer_to_server(self.dispatcher, cluster)
        cluster_pb2_grpc.add_NodeCAServicer_to_server(NodeCAServicer(self.manager), cluster)
        cluster_pb2_grpc.add_RaftMembershipServicer_to_server(
            RaftMembershipServicer(self.manager), cluster)
        cluster_pb2_grpc.add_LogBrokerServicer_to_server(LogBrokerServicer(self.logbroker),
                                                         cluster)
        cluster_pb2_grpc.add_LogsServicer_to_server(LogsServicer(self.logbroker), cluster)
        cluster.add_secure_port(f"{self._state.listen_ip}:{self._state.port}",
                                _server_credentials(self._certs, True))
        return cluster

    async def _keep_peers(self) -> None:
        """Keep the Raft members on disk as Raft changes them: a manager restarts with the
        members it last knew, never as a cluster of one that could elect itself and
        overwrite entries the others committed."""
        while True:
            members = self.replica.members()
            if self.replica.ready() and members != self._state.raft_peers:
                self._state.raft_peers = members
                self._data.save_state(self._state)
                log.info("Raft members are now %s", ", ".join(members))
            clusters = self.store.list(pb.Cluster)
            if clusters:
                self._follow_cluster(clusters[0])
            await asyncio.sleep(PEERS_CHECK)

    def _follow_cluster(self, cluster: pb.Cluster) -> None:
        """Apply the swarm settings that live on each manager: the Raft snapshot interval,
        and autolock (seal or unseal this manager's keys at rest as the swarm says)."""
        self.replica.set_snapshot_interval(cluster.spec.raft.snapshot_interval)
        kek = cluster_kek(cluster)
        if kek != self._data.kek:
            self._data.kek = kek
            self._data.save_certs(self._certs())
            self._data.save_raft_keys(self._secret, self._dek)
            log.info("autolock is %s: this manager's keys at rest are %s",
                     "on" if kek else "off", "sealed" if kek else "in clear")

    async def wait_leader(self, timeout: float) -> None:
        await _until(lambda: self.replica.leader_addr() is not None, timeout,
                     "no Raft leader was elected")

    async def wait_store(self, ready: Callable[[], bool], timeout: float) -> None:
        await _until(ready, timeout, "the store did not catch up with the leader")

    async def stop(self) -> None:
        await self.services.stop()
        for server in self._servers:
            await server.stop(grace=0.5)
        self._servers.clear()
        await asyncio.to_thread(self.replica.close)


async def _until(check: Callable[[], bool], timeout: float, failure: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(failure) from None

