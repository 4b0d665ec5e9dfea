"""CA servicers: the join bootstrap (token-authenticated, server TLS only) and certificate
renewal (mTLS)."""

from __future__ import annotations

import datetime
import functools
import logging

import grpc

from manager import grpcapi
from manager.ca.authority import RootCA, check_join_token
from manager.ca.errors import CAError, JoinRefused
from manager.errors import InvalidArgument, NotFound, PermissionDenied
from manager.identity import new_id
from manager.manager import Manager
from proto import cluster_pb2, cluster_pb2_grpc, store_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_CERT_EXPIRY = datetime.timedelta(days=90)
MIN_CERT_EXPIRY = datetime.timedelta(seconds=30)


def cert_expiry(cluster: pb.Cluster) -> datetime.timedelta:
    ns = cluster.spec.ca_config.node_cert_expiry_ns
    if not ns:
        return DEFAULT_CERT_EXPIRY
    return max(datetime.timedelta(microseconds=ns / 1000), MIN_CERT_EXPIRY)


def signer(cluster: pb.Cluster) -> RootCA:
    return _root_ca(cluster.root_ca.ca_cert_pem, cluster.root_ca.ca_key_pem)


@functools.lru_cache(maxsize=4)
def _root_ca(cert_pem: bytes, key_pem: bytes) -> RootCA:
    # Loaded once per CA (a rotation brings new PEMs): loading it for every certificate
    # was a seventh of the signing while 2,000 nodes joined.
    return RootCA.from_pem(cert_pem, key_pem)


def sign(cluster: pb.Cluster, csr_pem: bytes, node_id: str, role: int) -> bytes:
    try:
        return signer(cluster).sign_node_certificate(
            csr_pem, node_id, role, cluster.id, cert_expiry(cluster))
    except CAError as err:
        raise InvalidArgument(str(err)) from err


class CAServicer(cluster_pb2_grpc.CAServicer):
    """Served on the bootstrap port: the caller has no certificate yet, only a join token."""

    def __init__(self, manager: Manager) -> None:
        self.mgr = manager

    @grpcapi.unary
    async def GetRootCACertificate(self, request: cluster_pb2.GetRootCARequest,
                                   context: grpc.aio.ServicerContext
                                   ) -> cluster_pb2.GetRootCAResponse:
        return cluster_pb2.GetRootCAResponse(ca_cert_pem=self.mgr.cluster().root_ca.ca_cert_pem)

    @grpcapi.unary
    async def IssueNodeCertificate(self, request: cluster_pb2.IssueNodeCertificateRequest,
                                   context: grpc.aio.ServicerContext
                                   ) -> cluster_pb2.IssueNodeCertificateResponse:
        cluster = self.mgr.cluster()
        try:
            role = check_join_token(request.token, cluster.root_ca)
        except JoinRefused as err:
            raise PermissionDenied(str(err)) from err
        node = pb.Node(id=new_id(), role=role)  # type: ignore[arg-type]
        node.spec.desired_role = role  # type: ignore[assignment]
        node.spec.availability = request.availability
        node.description.hostname = request.hostname
        node.status.addr = request.advertise_addr
        node.status.state = pb.NODE_UNKNOWN
        cert = sign(cluster, request.csr_pem, node.id, role)
        await self.mgr.write((store_pb2.CREATE, node))
        log.info("issued a %s certificate to new node %s (%s)",
                 grpcapi.role_name(role), node.id, request.hostname)
        return cluster_pb2.IssueNodeCertificateResponse(
            node_id=node.id, cert_pem=cert, role=role, cluster_id=cluster.id)  # type: ignore[arg-type]


class NodeCAServicer(cluster_pb2_grpc.NodeCAServicer):
    def __init__(self, manager: Manager) -> None:
        self.mgr = manager

    @grpcapi.unary
    async def RenewCertificate(self, request: cluster_pb2.RenewCertificateRequest,
                               context: grpc.aio.ServicerContext
                               ) -> cluster_pb2.RenewCertificateResponse:
        cluster = self.mgr.cluster()
        ident = grpcapi.caller(context, cluster.id, (pb.WORKER, pb.MANAGER), self.mgr.store)
        node = self.mgr.store.get(pb.Node, ident.node_id)
        if node is None:
            raise NotFound(f"node {ident.node_id} was removed from the swarm; it can't renew "
                           "its certificate. Run `docker swarm leave` on it and join again.")
        cert = sign(cluster, request.csr_pem, node.id, node.role)
        return cluster_pb2.RenewCertificateResponse(cert_pem=cert, role=node.role)
