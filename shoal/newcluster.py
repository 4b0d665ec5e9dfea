"""What a new one-manager cluster starts from: `docker swarm init` (a new cluster),
`shoald --restore` (a backup's store) and `docker swarm init --force-new-cluster` (this
manager's own store, after the quorum was lost). Node runs these under its membership lock
and starts the roles; here are the objects, certificates and stores they need."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

import pki
from manager import backup
from manager.ca.authority import RootCA
from manager.ca.server import cert_expiry
from manager.errors import Unavailable
from manager.identity import new_id
from manager.raft.journal import set_aside
from manager.raft.replica import apply_logged_tail
from manager.store.memory import MemoryStore
from pki import sealing
from proto import objects_pb2 as pb
from shoal.description import describe
from shoal.nodestate import Certificates, SwarmState
from shoal.roles import ManagerRole

log = logging.getLogger(__name__)


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


def new_cluster(req: InitRequest) -> tuple[RootCA, pb.Cluster]:
    """`swarm init`'s cluster: a new root CA, Raft secret and Raft key, and an unlock key
    when autolock is asked for."""
    root = RootCA.create()
    cluster = pb.Cluster(id=new_id(), spec=req.spec, root_ca=root.to_proto(),
                         raft_secret=secrets.token_urlsafe(32),
                         default_addr_pool=req.default_addr_pool,
                         subnet_size=req.subnet_size,
                         data_path_port=req.data_path_port,
                         raft_dek=sealing.new_key())
    if req.spec.encryption_config.auto_lock_managers:
        cluster.unlock_key = sealing.new_key()
    cluster.spec.annotations.name = "default"
    return root, cluster


def restored_cluster(snapshot: bytes) -> tuple[bytes, RootCA, pb.Cluster]:
    """The store a restore starts from (the backup's, for a new Raft group), its cluster and
    root CA: the cluster keeps its ID, CA and join tokens."""
    snapshot = backup.for_new_cluster(snapshot, secrets.token_urlsafe(32))
    cluster = backup.cluster_of(snapshot)
    root = RootCA.from_pem(cluster.root_ca.ca_cert_pem, cluster.root_ca.ca_key_pem)
    return snapshot, root, cluster


def first_manager(root: RootCA, cluster: pb.Cluster, advertise_ip: str, listen_ip: str,
                  port: int) -> tuple[SwarmState, Certificates]:
    """This host as a new node, the cluster's only manager and Raft member, with a manager
    certificate the cluster's CA signs for a new key."""
    node_id, key = new_id(), pki.new_key()
    cert = root.sign_node_certificate(pki.make_csr(key), node_id, pb.MANAGER, cluster.id,
                                      cert_expiry(cluster))
    state = SwarmState(node_id, cluster.id, advertise_ip, listen_ip, port)
    state.managers, state.raft_peers = [state.addr], [state.raft_addr]
    return state, Certificates(pki.key_pem(key), cert, root.cert_pem)


def first_node(state: SwarmState, hostname: str, availability: int) -> pb.Node:
    """The Node object of the first manager, written by itself: no join made it."""
    node = pb.Node(id=state.node_id, role=pb.MANAGER)
    node.spec.desired_role = pb.MANAGER
    node.spec.availability = availability  # type: ignore[assignment]
    node.description.CopyFrom(describe(hostname))
    node.status.addr = state.advertise_ip
    node.manager_status.addr = state.addr
    node.manager_status.raft_addr = state.raft_addr
    node.manager_status.leader = True
    node.manager_status.reachability = pb.REACHABLE
    return node


def ingress_network() -> pb.Network:
    """The routing mesh's network, made with the swarm (as Docker's `ingress`); the
    allocator gives it the first subnet of the pool."""
    spec = pb.NetworkSpec(driver="overlay", ingress=True)
    spec.annotations.name = "ingress"
    return pb.Network(id=new_id(), spec=spec)


async def settled_store(role: ManagerRole) -> int:
    """The last Raft index this manager applied, once it has applied all it knows to be
    committed: a manager just started may not have applied its own log yet."""
    try:
        await role.wait_store(lambda: role.replica.applied_all_committed() and
                              bool(role.store.list(pb.Cluster)), 30.0)
    except TimeoutError:
        raise Unavailable("can't force a new cluster: this manager's store did not "
                          "load its Raft log within 30 s; nothing was changed") from None
    return int(role.replica.status()["last_applied"])


def forced_snapshot(store: MemoryStore, raft_dir: str, applied: int, dek: bytes | None) -> bytes:
    """The store a forced new cluster starts from, taken from a stopped manager: its store
    with the entries logged after `applied` too, committed or not (as Docker keeps them). The
    old Raft files are set aside, so the new Raft group starts with an empty log."""
    tail = apply_logged_tail(store, raft_dir, applied, dek)
    log.warning("forcing a new cluster: kept %d logged entries beyond the last "
                "known commit", tail)
    snapshot = store.snapshot()
    aside, _ = set_aside(raft_dir)
    log.warning("forcing a new cluster: the old Raft files are in %s", aside)
    return snapshot


def lost_manager(node: pb.Node) -> bool:
    """A manager left behind by a forced new cluster: no longer a Raft member, so a worker
    (and down until it connects again)."""
    node.role = pb.WORKER
    node.spec.desired_role = pb.WORKER
    node.ClearField("manager_status")
    node.status.state = pb.NODE_DOWN
    node.status.message = "left behind by a forced new cluster"
    return True


async def leave_behind(role: ManagerRole, keep: str) -> None:
    """Make every manager in the store but node `keep` a worker left behind (lost_manager):
    the new cluster's only Raft member is `keep`."""
    for node in role.store.list(pb.Node):
        if node.id != keep and node.role == pb.MANAGER:
            await role.manager.modify(pb.Node, node.id, lost_manager)
