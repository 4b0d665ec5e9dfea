"""Cluster (swarm) updates: spec changes with a version check, join-token and unlock-key
rotation."""

from __future__ import annotations

from manager.ca.authority import rotate_token
from manager.controlapi.limits import check_cluster_spec
from manager.manager import Manager
from pki import sealing
from proto import objects_pb2 as pb


def set_unlock_key(cluster: pb.Cluster, rotate: bool) -> None:
    """Autolock on: keep (or, rotating, replace) the unlock key; off: forget it. Every
    manager reseals its keys at rest when this changes (shoal/roles.py)."""
    if not cluster.spec.encryption_config.auto_lock_managers:
        cluster.unlock_key = b""
    elif rotate or not cluster.unlock_key:
        cluster.unlock_key = sealing.new_key()


async def update_cluster(mgr: Manager, version: int, spec: pb.ClusterSpec,
                         rotate_worker: bool, rotate_manager: bool,
                         rotate_unlock_key: bool = False) -> None:
    check_cluster_spec(spec)
    cluster = mgr.cluster()
    cluster.spec.CopyFrom(spec)
    cluster.meta.version.index = version
    if rotate_worker:
        rotate_token(cluster.root_ca, pb.WORKER)
    if rotate_manager:
        rotate_token(cluster.root_ca, pb.MANAGER)
    set_unlock_key(cluster, rotate_unlock_key)
    await mgr.update(cluster)


def unlock_key(cluster: pb.Cluster) -> str:
    """The unlock key as users see it, or "" while autolock is off."""
    return sealing.format_unlock_key(cluster.unlock_key) if cluster.unlock_key else ""
