"""Issue 2, item 4: mutual TLS between nodes, certificate renewal, Raft secret."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest

import pki
from shoal import lab as labmod
from shoal.lab import LabState
from tests.system.conftest import LabFactory, wait_until
from tests.system.helpers import by_hostname

pytestmark = pytest.mark.system
PROBE = str(Path(__file__).with_name("grpc_probe.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def probe(lab: LabState, host: str, identity: str, method: str) -> str:
    certdir = str(Path(lab.host(host).data_root) / "certificates")
    addr = f"{lab.host('m1').address}:2377"
    out = labmod.exec_in(lab.name, host, [sys.executable, PROBE, addr, identity, method, certdir],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.lab(managers=1, workers=1)
def test_grpc_needs_a_certificate_of_this_cluster_and_the_right_role(lab: LabState) -> None:
    assert probe(lab, "w1", "node", "renew") == "OK"
    assert probe(lab, "m1", "node", "raftjoin").startswith("OK")
    no_cert = probe(lab, "w1", "none", "renew")
    foreign = probe(lab, "w1", "foreign", "renew")
    # both are refused in the TLS handshake, before any method runs
    assert no_cert.startswith("UNAVAILABLE"), no_cert
    assert foreign.startswith("UNAVAILABLE"), foreign
    worker = probe(lab, "w1", "node", "raftjoin")
    assert worker.startswith("PERMISSION_DENIED") and "managers" in worker or \
        "manager nodes only" in worker, worker


def test_certificates_renew_before_they_expire(lab_factory: LabFactory) -> None:
    lab = lab_factory(1, 1, form_swarm=False)
    m1, w1 = lab.host("m1"), lab.host("w1")
    for host in (m1, w1):
        wait_until(lambda h=host: _ping(h), 20, f"{host.name} API")
    m1.client().post("/swarm/init", {"AdvertiseAddr": m1.address, "ListenAddr": "0.0.0.0:2377",
                                     "Spec": {"CAConfig": {"NodeCertExpiry": 40 * 10**9}}})
    token = m1.client().get("/swarm")["JoinTokens"]["Worker"]
    w1.client().post("/swarm/join", {"RemoteAddrs": [f"{m1.address}:2377"], "JoinToken": token,
                                     "AdvertiseAddr": w1.address})
    first = {h.name: _cert(h.data_root) for h in (m1, w1)}
    for ident in first.values():
        assert (ident.not_after - ident.not_before).total_seconds() < 40 + 3600 + 5
    for host in (m1, w1):
        renewed = wait_until(lambda h=host: (c := _cert(h.data_root)).not_before >
                             first[h.name].not_before and c, 45, f"{host.name} to renew")
        assert renewed.node_id == first[host.name].node_id
        assert renewed.not_after > first[host.name].not_after
        # renewed in the second half of its life (not at once, not after expiry)
        assert renewed.not_before - first[host.name].not_before >= timedelta(seconds=15)
        assert renewed.not_before < first[host.name].not_after
    # still a working cluster after the renewals (and after the old ones expired)
    wait_until(lambda: all(n["Status"]["State"] == "ready"
                           for n in by_hostname(m1.client()).values()), 30, "nodes ready")


def _ping(host: labmod.HostState) -> bool:
    try:
        host.client(timeout=2).get("/_ping")
        return True
    except Exception:
        return False


def _cert(data_root: str) -> pki.Identity:
    return pki.identity_of((Path(data_root) / "certificates" / "node.crt").read_bytes())
