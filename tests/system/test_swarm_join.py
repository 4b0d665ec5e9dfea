"""Issue 2, items 1, 2 and 8: swarm init, joins (and refused joins), bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pki
from shoal.client import APIError
from shoal.lab import LabState
from tests.system.conftest import LabFactory, wait_until
from tests.system.helpers import by_hostname, nodes, shoal, try_get

pytestmark = pytest.mark.system
TOKEN = re.compile(r"^SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$")


@pytest.fixture
def bare(lab_factory: LabFactory) -> LabState:
    """Three hosts with shoald running and no swarm yet."""
    lab = lab_factory(1, 2, form_swarm=False)
    for host in lab.hosts:
        wait_until(lambda h=host: try_get(h.client(timeout=2), "/_ping"), 20, f"{host.name} API")
    return lab


def _join(lab: LabState, host: str, token: str) -> object:
    m1 = lab.host("m1")
    return lab.host(host).client().post("/swarm/join", {
        "RemoteAddrs": [f"{m1.address}:2377"], "JoinToken": token,
        "AdvertiseAddr": lab.host(host).address, "ListenAddr": "0.0.0.0:2377"})


def test_init_creates_ca_tokens_store_and_prints_join_command(bare: LabState) -> None:
    m1 = bare.host("m1")
    out = shoal(m1, "swarm", "init", "--advertise-addr", m1.address)
    assert out.returncode == 0, out.stderr
    swarm = m1.client().get("/swarm")
    worker, manager = swarm["JoinTokens"]["Worker"], swarm["JoinTokens"]["Manager"]
    assert TOKEN.match(worker) and TOKEN.match(manager) and worker != manager
    assert f"shoal swarm join --token {worker} {m1.address}:2377" in out.stdout
    certs = Path(m1.data_root) / "certificates"
    ca_pem = (certs / "ca.crt").read_bytes()
    assert swarm["TLSInfo"]["TrustRoot"] == ca_pem.decode()
    assert pki.ca_digest(ca_pem) == worker.split("-")[2]
    ident = pki.identity_of((certs / "node.crt").read_bytes())
    info = m1.client().get("/info")["Swarm"]
    assert (ident.node_id, ident.cluster_id) == (info["NodeID"], swarm["ID"])
    assert ident.role == 1  # manager
    assert (Path(m1.data_root) / "raft" / "journal.bin").exists()
    again = shoal(m1, "swarm", "init", "--advertise-addr", m1.address)
    assert again.returncode == 1 and "already part of a swarm" in again.stderr


def test_joins_and_refusals(bare: LabState) -> None:
    m1, w1, w2 = bare.host("m1"), bare.host("w1"), bare.host("w2")
    m1.client().post("/swarm/init", {"AdvertiseAddr": m1.address, "ListenAddr": "0.0.0.0:2377"})
    tokens = m1.client().get("/swarm")["JoinTokens"]
    worker_token = tokens["Worker"]
    digest, secret = worker_token.split("-")[2], worker_token.split("-")[3]
    refusals = {
        "SWMTKN-1-garbage": "malformed",
        pki.format_join_token(digest, pki.new_token_secret()): "matches neither",
        pki.format_join_token("1" * 50, secret): "CA digest does not match",
    }
    for token, reason in refusals.items():
        with pytest.raises(APIError) as err:
            _join(bare, "w1", token)
        assert reason in err.value.message, err.value.message
    assert len(nodes(m1.client())) == 1  # nothing was added
    assert w1.client().get("/info")["Swarm"]["LocalNodeState"] == "inactive"

    # a rotated-away token is refused and says so
    out = shoal(m1, "swarm", "join-token", "--rotate", "-q", "worker")
    assert out.returncode == 0, out.stderr
    with pytest.raises(APIError) as err:
        _join(bare, "w1", worker_token)
    assert "rotated" in err.value.message
    new_token = out.stdout.strip()

    _join(bare, "w1", new_token)
    manager_token = m1.client().get("/swarm")["JoinTokens"]["Manager"]
    _join(bare, "w2", manager_token)
    listed = wait_until(lambda: _all_ready(m1.client(), 3), 30, "three ready nodes")
    assert "ManagerStatus" not in listed["w1"]
    assert listed["w2"]["ManagerStatus"]["Reachability"] == "reachable"
    assert listed["w2"]["Spec"]["Role"] == "manager"
    assert w2.client().get("/info")["Swarm"]["ControlAvailable"] is True
    # joining a node that is already in a swarm is refused
    with pytest.raises(APIError) as err:
        _join(bare, "w1", new_token)
    assert err.value.status == 503 and "already part of a swarm" in err.value.message


def _all_ready(client: object, count: int) -> dict | None:
    listed = by_hostname(client)  # type: ignore[arg-type]
    ready = [n for n in listed.values() if n["Status"]["State"] == "ready"]
    return listed if len(ready) == count else None


def _settled(client: object, hostname: str) -> dict:
    """The node once its version has not moved for 2 s."""
    seen: list[dict] = []

    def still() -> dict | None:
        seen.append(by_hostname(client)[hostname])  # type: ignore[arg-type]
        if len(seen) > 1 and seen[-1]["Version"] == seen[-2]["Version"]:
            return seen[-1]
        return None
    return wait_until(still, 60, f"{hostname}'s node settled", interval=2.0)


@pytest.mark.lab(managers=1, workers=1)
def test_bad_input_gets_docker_errors_and_changes_nothing(lab: LabState) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    client = m1.client()
    # a node that just joined still reports its status (each report a new version): start
    # from a node that is ready and has settled, as a user reading `node inspect` would
    wait_until(lambda: _all_ready(client, 2), 60, "both nodes ready")
    w1_node = _settled(client, "w1")
    before = w1_node["Version"]["Index"]
    path = f"/nodes/{w1_node['ID']}/update?version={before}"
    conn_statuses = {
        b"{not json": (400, "malformed JSON"),
        b'{"Availability": "drain", "Colour": "red"}': (400, 'unknown field "Colour"'),
        b'{"Availability": "sideways"}': (400, "invalid availability"),
    }
    for body, (status, text) in conn_statuses.items():
        with pytest.raises(APIError) as err:
            _raw_post(client, path, body)
        assert err.value.status == status and text in err.value.message, err.value.message
    with pytest.raises(APIError) as err:
        client.get("/nodes/no-such-node")
    assert err.value.status == 404 and "no-such-node" in err.value.message
    spec = w1_node["Spec"] | {"Availability": "pause"}
    client.post(f"/nodes/{w1_node['ID']}/update", spec, version=before)
    with pytest.raises(APIError) as err:  # the same version again is now stale
        client.post(f"/nodes/{w1_node['ID']}/update", spec | {"Availability": "drain"},
                    version=before)
    assert err.value.status == 500 and "update out of sequence" in err.value.message
    assert by_hostname(client)["w1"]["Spec"]["Availability"] == "pause"
    with pytest.raises(APIError) as err:
        w1.client().get("/nodes")
    assert err.value.status == 503 and f"{m1.address}:2377" in err.value.message
    # the CLI shows these messages and exits non-zero
    out = shoal(w1, "node", "ls")
    assert out.returncode == 1
    assert out.stderr.startswith("Error response from daemon: This node is not a swarm manager")
    out = shoal(m1, "node", "inspect", "no-such-node")
    assert out.returncode == 1 and "not found" in out.stderr
    # versioned and unversioned paths both work
    assert client.get("/v1.44/nodes") and client.get("/v1.41/info")["Swarm"]["ControlAvailable"]


def _raw_post(client: object, path: str, body: bytes) -> None:
    import http.client
    import json

    from shoal.client import APIError as Err

    conn = client._connection()  # type: ignore[attr-defined]
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status >= 400:
        raise Err(resp.status, json.loads(data)["message"])
    assert isinstance(conn, http.client.HTTPConnection)
