"""RaftMembership: a manager that got its certificate joins the Raft group over mTLS; this is
the only way the Raft secret (and the Raft data key) leaves a manager."""

from __future__ import annotations

import asyncio
import logging

import grpc

from manager import grpcapi
from manager.manager import Manager
from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)


class RaftMembershipServicer(cluster_pb2_grpc.RaftMembershipServicer):
    def __init__(self, manager: Manager) -> None:
        self.mgr = manager
        self._joins: set[asyncio.Task[None]] = set()

    @grpcapi.unary
    async def Join(self, request: cluster_pb2.JoinRaftRequest,
                   context: grpc.aio.ServicerContext) -> cluster_pb2.JoinRaftResponse:
        cluster = self.mgr.cluster()
        ident = grpcapi.caller(context, cluster.id, (pb.MANAGER,), self.mgr.store)
        members = self.mgr.replica.members()
        # The new member must be running before the change can commit (it counts towards
        # the new quorum), so answer now and add it in the background.
        self._joins.add(asyncio.create_task(self._add(ident.node_id, request)))
        return cluster_pb2.JoinRaftResponse(raft_secret=cluster.raft_secret,
                                            raft_dek=cluster.raft_dek,
                                            members=sorted({*members, request.raft_addr}))

    async def _add(self, node_id: str, request: cluster_pb2.JoinRaftRequest) -> None:
        try:
            # A demotion may have been asked for since Join answered: never re-add a node
            # that is no longer meant to be a manager, nor mark it as one.
            if not self._still_manager(node_id):
                log.warning("not adding %s (%s) to Raft: it is no longer a manager",
                            node_id, request.raft_addr)
                return
            if request.raft_addr not in self.mgr.replica.members():
                await self.mgr.replica.add_member(request.raft_addr, timeout=30.0)

            def member(node: pb.Node) -> bool:
                if grpcapi.current_role(node) != pb.MANAGER:
                    return False
                node.manager_status.addr = request.addr
                node.manager_status.raft_addr = request.raft_addr
                node.manager_status.reachability = pb.REACHABLE
                return True

            await self.mgr.modify(pb.Node, node_id, member)
        except Exception:
            log.exception("adding %s (%s) to Raft failed", node_id, request.raft_addr)
        finally:
            self._joins.discard(asyncio.current_task())  # type: ignore[arg-type]

    def _still_manager(self, node_id: str) -> bool:
        node = self.mgr.store.get(pb.Node, node_id)
        return node is not None and grpcapi.current_role(node) == pb.MANAGER

    @grpcapi.unary
    async def Leave(self, request: cluster_pb2.LeaveRaftRequest,
                    context: grpc.aio.ServicerContext) -> cluster_pb2.Empty:
        cluster = self.mgr.cluster()
        ident = grpcapi.caller(context, cluster.id, (pb.MANAGER,), self.mgr.store)
        node = self.mgr.node(ident.node_id)
        if node.manager_status.raft_addr:
            await self.mgr.replica.remove_member(node.manager_status.raft_addr)
        return cluster_pb2.Empty()
