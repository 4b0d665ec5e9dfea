"""gRPC faces of the log broker: LogBroker for agents, Logs for managers that forward a
client's subscription to the leader."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from manager import grpcapi
from manager.errors import FailedPrecondition
from manager.logbroker.broker import LogBroker
from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb


class LogBrokerServicer(cluster_pb2_grpc.LogBrokerServicer):
    def __init__(self, broker: LogBroker) -> None:
        self.broker = broker

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        cluster = self.broker.mgr.cluster()
        ident = grpcapi.caller(context, cluster.id, (pb.WORKER, pb.MANAGER), self.broker.mgr.store)
        if not self.broker.mgr.is_leader():
            raise FailedPrecondition(f"not the leader; leader={self.broker.mgr.leader_addr()}")
        return ident.node_id

    @grpcapi.streaming
    async def ListenSubscriptions(self, request: cluster_pb2.ListenSubscriptionsRequest,
                                  context: grpc.aio.ServicerContext
                                  ) -> AsyncIterator[cluster_pb2.SubscriptionMessage]:
        node_id = self._caller(context)
        queue = self.broker.agent_connected(node_id)
        try:
            while True:
                yield await queue.get()
        finally:
            self.broker.agent_gone(node_id, queue)

    @grpcapi.unary
    async def PublishLogs(self, request_iterator: AsyncIterator[cluster_pb2.PublishLogsMessage],
                          context: grpc.aio.ServicerContext) -> cluster_pb2.Empty:
        node_id = self._caller(context)
        async for msg in request_iterator:
            self.broker.publish(node_id, msg)
        return cluster_pb2.Empty()


class LogsServicer(cluster_pb2_grpc.LogsServicer):
    def __init__(self, broker: LogBroker) -> None:
        self.broker = broker

    @grpcapi.streaming
    async def SubscribeLogs(self, request: cluster_pb2.SubscribeLogsRequest,
                            context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[cluster_pb2.SubscribeLogsMessage]:
        grpcapi.caller(context, self.broker.mgr.cluster().id, (pb.MANAGER,), self.broker.mgr.store)
        if not self.broker.mgr.is_leader():
            raise FailedPrecondition(f"not the leader; leader={self.broker.mgr.leader_addr()}")
        async for batch in self.broker.subscribe(request.selector, request.options):
            yield cluster_pb2.SubscribeLogsMessage(messages=batch)
