"""Reading service and task logs from any manager: the leader's broker directly, or the
leader's Logs service over mTLS from a follower."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

import pki
from manager.errors import Unavailable
from proto import cluster_pb2, cluster_pb2_grpc
from shoal.node import Node


async def subscribe(node: Node, selector: cluster_pb2.LogSelector,
                    options: cluster_pb2.LogOptions
                    ) -> AsyncIterator[list[cluster_pb2.LogMessage]]:
    mgr = node.manager()
    role = node.manager_role
    assert role is not None
    if mgr.is_leader():
        async for batch in role.logbroker.subscribe(selector, options):
            yield batch
        return
    leader = mgr.leader_addr()
    if leader is None:
        raise Unavailable("no leader to read logs from; retry when the managers have a leader")
    certs = node.certs
    assert certs is not None
    creds = pki.channel_credentials(certs.ca_pem, certs.key_pem, certs.cert_pem)
    async with grpc.aio.secure_channel(leader, creds, options=pki.channel_options()) as channel:
        stream = cluster_pb2_grpc.LogsStub(channel).SubscribeLogs(
            cluster_pb2.SubscribeLogsRequest(selector=selector, options=options))
        try:
            async for msg in stream:
                yield list(msg.messages)
        except grpc.aio.AioRpcError as err:
            raise Unavailable(f"reading logs through the leader {leader} failed: "
                              f"{err.details()}") from err
