"""The one place that converts cluster objects (protobuf) to Docker's JSON and back."""

from __future__ import annotations

import base64
import datetime
import functools
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proto import objects_pb2 as pb
from shoal.api.request import check_int, fields
from shoal.errors import InvalidRequest

ROLE = {pb.WORKER: "worker", pb.MANAGER: "manager"}
AVAILABILITY = {pb.ACTIVE: "active", pb.PAUSE: "pause", pb.DRAIN: "drain"}
NODE_STATE = {pb.NODE_UNKNOWN: "unknown", pb.NODE_DOWN: "down", pb.NODE_READY: "ready",
              pb.NODE_DISCONNECTED: "disconnected"}
REACHABILITY = {pb.REACHABILITY_UNKNOWN: "unknown", pb.UNREACHABLE: "unreachable",
                pb.REACHABLE: "reachable"}

DEFAULT_HEARTBEAT_NS = 5_000_000_000
DEFAULT_CERT_EXPIRY_NS = 90 * 24 * 3600 * 1_000_000_000


def timestamp(ns: int) -> str:
    if not ns:
        return "0001-01-01T00:00:00Z"
    return _seconds(ns // 1_000_000_000) + f"{ns % 1_000_000_000:09d}Z"


@functools.lru_cache(maxsize=4096)
def _seconds(seconds: int) -> str:
    """The date and time to the second (objects made together share it: listing many tasks
    formats each second once). From the whole seconds, so that a fraction of .9999999 is
    never rounded into the next second."""
    dt = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.")


def _meta(obj: Any) -> dict[str, Any]:
    return {"ID": obj.id, "Version": {"Index": obj.meta.version.index},
            "CreatedAt": timestamp(obj.meta.created_at_ns),
            "UpdatedAt": timestamp(obj.meta.updated_at_ns)}


def node_json(node: pb.Node, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    """`tls`: the node's Description.TLSInfo (the root it trusts and its certificate's
    issuer). Every node's certificate is issued by the cluster's root CA, so it is the
    cluster's TLSInfo (`docker swarm ca` compares the two)."""
    desc = node.description
    out = _meta(node) | {
        "Spec": {"Name": node.spec.annotations.name, "Labels": dict(node.spec.annotations.labels),
                 "Role": ROLE[node.spec.desired_role],
                 "Availability": AVAILABILITY[node.spec.availability]},
        "Description": {
            "Hostname": desc.hostname,
            "Platform": {"Architecture": desc.platform.architecture, "OS": desc.platform.os},
            "Resources": {"NanoCPUs": desc.resources.nano_cpus,
                          "MemoryBytes": desc.resources.memory_bytes},
            "Engine": {"EngineVersion": desc.engine.engine_version,
                       "Labels": dict(desc.engine.labels), "Plugins": []},
        } | ({"TLSInfo": tls} if tls is not None else {}),
        "Status": {"State": NODE_STATE[node.status.state], "Message": node.status.message,
                   "Addr": node.status.addr},
    }
    if node.HasField("tunnel"):
        # Shoal's own (Docker has no WireGuard): the node's end of the encrypted overlays,
        # so `node inspect` shows a rotated key or why the tunnel is down.
        out["Tunnel"] = {"PublicKey": node.tunnel.public_key, "Addr": node.tunnel.addr,
                         "Error": node.tunnel.error,
                         "KeyCreatedNs": node.tunnel.key_created_ns}
    if node.HasField("manager_status") and node.manager_status.addr:
        ms = node.manager_status
        out["ManagerStatus"] = {"Leader": ms.leader,
                                "Reachability": REACHABILITY[ms.reachability], "Addr": ms.addr}
    return out


def _enum(value: str, names: Mapping[Any, str], what: str) -> Any:
    for key, name in names.items():
        if name == value.lower():
            return key
    raise InvalidRequest(f"invalid {what} {value!r}: expected one of {', '.join(names.values())}")


def node_spec(body: Any) -> pb.NodeSpec:
    f = fields(body, {"Name": str, "Labels": dict, "Role": str, "Availability": str}, "NodeSpec")
    spec = pb.NodeSpec()
    spec.annotations.name = f.get("Name", "")
    spec.annotations.labels.update(_labels(f.get("Labels", {})))
    spec.desired_role = _enum(f.get("Role", "worker"), ROLE, "role")
    spec.availability = _enum(f.get("Availability", "active"), AVAILABILITY, "availability")
    return spec


def _labels(labels: dict[str, Any]) -> dict[str, str]:
    if not all(isinstance(v, str) for v in labels.values()):
        raise InvalidRequest("labels must map strings to strings")
    return labels


def cluster_spec_json(spec: pb.ClusterSpec) -> dict[str, Any]:
    raft = spec.raft
    return {
        "Name": spec.annotations.name, "Labels": dict(spec.annotations.labels),
        "Orchestration": {"TaskHistoryRetentionLimit":
                          spec.orchestration.task_history_retention_limit or 5},
        "Raft": {"SnapshotInterval": raft.snapshot_interval or 10000, "KeepOldSnapshots": 0,
                 "LogEntriesForSlowFollowers": 500, "ElectionTick": raft.election_tick or 10,
                 "HeartbeatTick": raft.heartbeat_tick or 1},
        "Dispatcher": {"HeartbeatPeriod":
                       spec.dispatcher.heartbeat_period_ns or DEFAULT_HEARTBEAT_NS},
        "CAConfig": {"NodeCertExpiry": spec.ca_config.node_cert_expiry_ns or
                     DEFAULT_CERT_EXPIRY_NS},
        "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": spec.encryption_config.auto_lock_managers},
    }


_SPEC_SECTIONS: dict[str, type | tuple[type, ...]] = {
    "Name": str, "Labels": dict, "Orchestration": dict, "Raft": dict, "Dispatcher": dict,
    "CAConfig": dict, "TaskDefaults": dict, "EncryptionConfig": dict}


def cluster_spec(body: Any, base: pb.ClusterSpec | None = None) -> pb.ClusterSpec:
    """A ClusterSpec from Docker's JSON; zero values keep the defaults (as Docker's do)."""
    f = fields(body, _SPEC_SECTIONS, "Spec")
    spec = pb.ClusterSpec()
    if base is not None:
        spec.CopyFrom(base)
    if "Name" in f:
        spec.annotations.name = f["Name"]
    if "Labels" in f:
        spec.annotations.labels.clear()
        spec.annotations.labels.update(_labels(f["Labels"]))
    orch = fields(f.get("Orchestration"), {"TaskHistoryRetentionLimit": int}, "Orchestration")
    _set_nonneg(spec.orchestration, "task_history_retention_limit",
                orch.get("TaskHistoryRetentionLimit"), "TaskHistoryRetentionLimit")
    disp = fields(f.get("Dispatcher"), {"HeartbeatPeriod": int}, "Dispatcher")
    _set_nonneg(spec.dispatcher, "heartbeat_period_ns", disp.get("HeartbeatPeriod"),
                "HeartbeatPeriod")
    ca = fields(f.get("CAConfig"), {"NodeCertExpiry": int, "ExternalCAs": list,
                                    "SigningCACert": str, "SigningCAKey": str,
                                    "ForceRotate": int}, "CAConfig")
    _set_nonneg(spec.ca_config, "node_cert_expiry_ns", ca.get("NodeCertExpiry"),
                "NodeCertExpiry")
    _refuse_ca_rotation(ca)
    raft = fields(f.get("Raft"), {"SnapshotInterval": int, "KeepOldSnapshots": int,
                                  "LogEntriesForSlowFollowers": int, "ElectionTick": int,
                                  "HeartbeatTick": int}, "Raft")
    if "SnapshotInterval" in raft:
        check_int(raft["SnapshotInterval"], "uint64", "SnapshotInterval")
        if raft["SnapshotInterval"]:
            spec.raft.snapshot_interval = raft["SnapshotInterval"]
    enc = fields(f.get("EncryptionConfig"), {"AutoLockManagers": bool}, "EncryptionConfig")
    if "AutoLockManagers" in enc:
        spec.encryption_config.auto_lock_managers = enc["AutoLockManagers"]
    return spec


def _refuse_ca_rotation(ca: dict[str, Any]) -> None:
    """`docker swarm ca --rotate` asks for a new root CA (ForceRotate +1, or a given CA):
    Shoal keeps its root CA for the cluster's life, so say so rather than pretend."""
    if ca.get("ForceRotate") or ca.get("SigningCACert") or ca.get("SigningCAKey") or \
            ca.get("ExternalCAs"):
        raise InvalidRequest("root CA rotation is not supported by Shoal yet: the swarm keeps "
                             "the root CA it was created with (external CAs and a given "
                             "signing CA are not supported either); nothing was changed")


def _set_nonneg(msg: Any, attr: str, value: int | None, name: str) -> None:
    if value is None:
        return
    if value < 0:
        raise InvalidRequest(f"invalid {name} {value}: must not be negative")
    check_int(value, "int64", name)
    if value:
        setattr(msg, attr, value)


def tls_info(cluster: pb.Cluster) -> dict[str, Any]:
    return dict(_tls_info(cluster.root_ca.ca_cert_pem))


@functools.lru_cache(maxsize=4)
def _tls_info(ca_pem: bytes) -> dict[str, Any]:
    """Parsed once per root CA, not on every GET /swarm or /info."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    key = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"TrustRoot": ca_pem.decode(),
            "CertIssuerSubject": base64.b64encode(cert.subject.public_bytes()).decode(),
            "CertIssuerPublicKey": base64.b64encode(key).decode()}


def cluster_json(cluster: pb.Cluster, with_tokens: bool) -> dict[str, Any]:
    out = _meta(cluster) | {
        "Spec": cluster_spec_json(cluster.spec),
        "TLSInfo": tls_info(cluster),
        "RootRotationInProgress": False,
        "DefaultAddrPool": list(cluster.default_addr_pool) or ["10.0.0.0/8"],
        "SubnetSize": cluster.subnet_size or 24,
        "DataPathPort": cluster.data_path_port or 4789,
    }
    if with_tokens:
        out["JoinTokens"] = {"Worker": cluster.root_ca.join_tokens.worker,
                             "Manager": cluster.root_ca.join_tokens.manager}
    return out
