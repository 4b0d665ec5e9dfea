"""Run inside a lab host's namespace: call one gRPC method of a manager with a chosen client
identity and print the status code name (OK on success).

usage: grpc_probe.py ADDR IDENTITY METHOD CERTDIR
  IDENTITY: none (no client certificate), node (CERTDIR's node.key/node.crt),
            foreign (a certificate from a freshly made CA of another cluster)
  METHOD:   renew (NodeCA.RenewCertificate, any node), raftjoin (RaftMembership.Join,
            managers only) or logs (Logs.SubscribeLogs, managers only)
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import grpc

import pki
from manager.ca.authority import RootCA
from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb


def credentials(identity: str, certdir: Path) -> grpc.ChannelCredentials:
    ca = (certdir / "ca.crt").read_bytes()
    if identity == "none":
        return pki.channel_credentials(ca)
    if identity == "node":
        return pki.channel_credentials(ca, (certdir / "node.key").read_bytes(),
                                       (certdir / "node.crt").read_bytes())
    other = RootCA.create()
    key = pki.new_key()
    cert = other.sign_node_certificate(pki.make_csr(key), "intruder", pb.MANAGER, "othercluster",
                                       datetime.timedelta(hours=1))
    return pki.channel_credentials(ca, pki.key_pem(key), cert)


def main() -> None:
    addr, identity, method, certdir = sys.argv[1:5]
    channel = grpc.secure_channel(addr, credentials(identity, Path(certdir)),
                                  options=pki.channel_options())
    try:
        if method == "renew":
            request = cluster_pb2.RenewCertificateRequest(csr_pem=pki.make_csr(pki.new_key()))
            cluster_pb2_grpc.NodeCAStub(channel).RenewCertificate(request, timeout=5)
        elif method == "logs":
            stream = cluster_pb2_grpc.LogsStub(channel).SubscribeLogs(
                cluster_pb2.SubscribeLogsRequest(), timeout=5)
            next(iter(stream), None)
        else:
            request2 = cluster_pb2.JoinRaftRequest(raft_addr="198.18.255.1:2379")
            cluster_pb2_grpc.RaftMembershipStub(channel).Join(request2, timeout=5)
        print("OK")
    except grpc.RpcError as err:
        print(err.code().name, err.details())


if __name__ == "__main__":
    main()
