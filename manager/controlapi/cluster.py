"""Cluster (swarm) updates: spec changes with a version check, join-token rotation."""

from __future__ import annotations

from manager.ca.authority import rotate_token
from manager.controlapi.limits import check_cluster_spec
from manager.manager import Manager
from proto import objects_pb2 as pb


async def update_cluster(mgr: Manager, version: int, spec: pb.ClusterSpec,
                         rotate_worker: bool, rotate_manager: bool) -> None:
    check_cluster_spec(spec)
    cluster = mgr.cluster()
    cluster.spec.CopyFrom(spec)
    cluster.meta.version.index = version
    if rotate_worker:
        rotate_token(cluster.root_ca, pb.WORKER)
    if rotate_manager:
        rotate_token(cluster.root_ca, pb.MANAGER)
    await mgr.update(cluster)
