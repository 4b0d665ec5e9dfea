"""Joining a swarm: learn the root CA and check it against the token's digest, then trade the
token and a CSR for a node certificate on the manager's bootstrap port."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

import pki
from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb
from shoal.errors import JoinFailed
from shoal.nodestate import Certificates


@dataclass
class JoinRequest:
    remote: str  # a manager's cluster address, IP:PORT
    token: str
    advertise_ip: str
    listen_ip: str
    port: int
    availability: int = pb.ACTIVE


@dataclass
class Joined:
    node_id: str
    cluster_id: str
    role: int
    certs: Certificates


def bootstrap_addr(remote: str) -> str:
    host, _, port = remote.rpartition(":")
    return f"{host}:{int(port) + 1}"


async def fetch_trusted_ca(remote: str, token: pki.JoinToken) -> bytes:
    try:
        ca_pem = await asyncio.to_thread(pki.fetch_root_ca_unverified, bootstrap_addr(remote), 5.0)
    except pki.PKIError as err:
        raise JoinFailed(f"could not reach the manager at {remote}: {err}. Check the address "
                         "and that the manager's ports are reachable.") from err
    if pki.ca_digest(ca_pem) != token.digest:
        raise JoinFailed(
            f"the join token's CA digest does not match the root CA of the swarm at {remote}: "
            "the token belongs to another swarm, or someone is in the middle. Nothing was "
            "changed.")
    return ca_pem


async def join(req: JoinRequest, hostname: str) -> Joined:
    try:
        token = pki.parse_join_token(req.token)
    except pki.TokenError as err:
        raise JoinFailed(str(err)) from err
    ca_pem = await fetch_trusted_ca(req.remote, token)
    key = pki.new_key()
    request = cluster_pb2.IssueNodeCertificateRequest(
        csr_pem=pki.make_csr(key), token=req.token, hostname=hostname,
        advertise_addr=req.advertise_ip, availability=req.availability)  # type: ignore[arg-type]
    creds = pki.channel_credentials(ca_pem)
    async with grpc.aio.secure_channel(bootstrap_addr(req.remote), creds,
                                       options=pki.channel_options()) as channel:
        try:
            resp = await cluster_pb2_grpc.CAStub(channel).IssueNodeCertificate(
                request, timeout=20.0)
        except grpc.aio.AioRpcError as err:
            raise JoinFailed(f"the manager at {req.remote} refused the join: {err.details()}") \
                from err
    certs = Certificates(pki.key_pem(key), resp.cert_pem, ca_pem)
    return Joined(resp.node_id, resp.cluster_id, resp.role, certs)
