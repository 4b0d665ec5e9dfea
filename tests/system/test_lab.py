"""System tests of the lab (shoal/lab.py, `shoal lab`): namespaces, switch, daemons, engine,
swarm.

Most tests run a stand-in daemon so they test the lab alone; `test_full_swarm` runs real
shoald processes and forms a 3-manager, 2-worker swarm. Every lab has a real dockerd.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from shoal import engine as enginemod
from shoal import engine_api, procs
from shoal import lab as labmod
from shoal.cli.lab_cmd import lab as lab_cli
from tests.system.conftest import LabFactory, root_namespace_snapshot, teardown_lab, wait_until

pytestmark = pytest.mark.system

SLEEPER = ["sleep", "3600"]

# A stand-in for shoald speaking just enough of the API for the lab to form a "swarm": the
# manager registers joiners over the lab network (TCP 2377), so joining crosses the switch.
FAKE_SHOALD = textwrap.dedent('''
    import http.server, json, socketserver, sys, threading, urllib.request, uuid
    sock = sys.argv[sys.argv.index("--host") + 1].removeprefix("unix://")
    node_id, nodes = uuid.uuid4().hex[:25], {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args): pass
        def reply(self, body, status=200):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def body(self):
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        def do_GET(self):
            self.reply({"/_ping": "OK", "/info": {"Swarm": {"NodeID": node_id}},
                        "/swarm": {"JoinTokens": {"Worker": "SWMTKN-w", "Manager": "SWMTKN-m"}},
                        "/nodes": list(nodes.values())}[self.path])
        def do_POST(self):
            req = self.body()
            if self.path == "/swarm/init":
                tcp = TCPServer(("0.0.0.0", 2377), Handler)
                threading.Thread(target=tcp.serve_forever, daemon=True).start()
                nodes[node_id] = {"ID": node_id, "Status": {"State": "ready",
                                  "Addr": req["AdvertiseAddr"]},
                                  "ManagerStatus": {"Leader": True}}
                return self.reply(node_id)
            if self.path == "/swarm/join":
                reg = {"ID": node_id, "Status": {"State": "ready", "Addr": req["AdvertiseAddr"]}}
                urllib.request.urlopen(urllib.request.Request(
                    "http://" + req["RemoteAddrs"][0] + "/register", json.dumps(reg).encode(),
                    {"Content-Type": "application/json"}), timeout=5).read()
                return self.reply(None)
            nodes[req["ID"]] = req
            self.reply(None)

    class TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
        allow_reuse_address = True

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        def get_request(self):
            conn, _ = super().get_request()
            return conn, ("lab", 0)

    print("fake shoald on", sock, flush=True)
    UnixServer(sock, Handler).serve_forever()
''')


def _ping(name: str, src: str, address: str) -> int:
    ping = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    return labmod.exec_in(name, src, [*ping, "-c1", "-W1", address],
                          capture_output=True).returncode


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _assert_gone(state: labmod.LabState, pids: list[int]) -> None:
    assert f"shl-{state.name}-" not in _netns_list()
    assert not Path(state.state_dir).exists()
    for pid in pids + [state.engine_pid or 0]:
        assert not procs.alive(pid), f"pid {pid} survived down"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert state.state_dir + "/" not in mounts


@pytest.fixture
def fake_shoald(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_shoald.py"
    script.write_text(FAKE_SHOALD)
    return [sys.executable, str(script), "--data-root", "{data_root}", "--host", "unix://{socket}"]


def test_namespace_plumbing(lab_factory: LabFactory) -> None:
    before = root_namespace_snapshot()
    state = lab_factory(2, 2, form_swarm=False, daemon_argv=SLEEPER)
    assert [h.name for h in state.hosts] == ["m1", "m2", "w1", "w2"]
    assert [h.role for h in state.hosts] == ["manager"] * 2 + ["worker"] * 2
    assert all(h.alive and h.pid for h in state.hosts)
    assert len({h.address for h in state.hosts}) == 4
    for src in state.hosts:
        for dst in state.hosts:
            if src is not dst:
                assert _ping(state.name, src.name, dst.address) == 0, (src.name, dst.name)
    recorded = json.loads((Path(state.state_dir) / "lab.json").read_text())
    assert [h["pid"] for h in recorded["hosts"]] == [h.pid for h in state.hosts]
    assert root_namespace_snapshot() == before

    # A process the lab did not record, left inside a host namespace: down must end it too.
    stray = subprocess.Popen(["ip", "netns", "exec", state.hosts[2].namespace, *SLEEPER],
                             start_new_session=True)
    wait_until(lambda: stray.pid in labmod.netns_pids(state.hosts[2].namespace), 5,
               "the stray process to enter the namespace")
    pids = [h.pid for h in state.hosts if h.pid] + [stray.pid]
    labmod.down(state.name)
    assert stray.wait(timeout=5) is not None
    _assert_gone(state, pids)
    assert root_namespace_snapshot() == before


@pytest.mark.lab(managers=1, workers=1, form_swarm=False, daemon_argv=SLEEPER)
def test_stop_start_kill_exec(lab: labmod.LabState) -> None:
    state = lab
    old = state.host("w1").pid
    assert labmod.stop_host(state.name, "w1").pid is None
    assert old is not None and not procs.alive(old)
    assert not labmod.status(state.name).host("w1").alive
    new = labmod.start_host(state.name, "w1")
    assert new.alive and new.pid != old
    assert labmod.status(state.name).host("w1").pid == new.pid
    with pytest.raises(labmod.LabError, match="already running"):
        labmod.start_host(state.name, "w1")
    labmod.kill_host(state.name, "m1", signal.SIGKILL)
    assert not labmod.status(state.name).host("m1").alive
    labmod.kill_host(state.name, "w1", signal.SIGSTOP)  # hung, not dead
    assert labmod.status(state.name).host("w1").alive
    started = time.monotonic()
    labmod.stop_host(state.name, "w1")
    assert time.monotonic() - started < labmod.STOP_TIMEOUT / 2, "SIGTERM ignored when stopped"
    assert not procs.alive(new.pid or 0)
    labmod.start_host(state.name, "w1")
    assert labmod.exec_in(state.name, "w1", ["sh", "-c", "exit 7"]).returncode == 7
    out = labmod.exec_in(state.name, "w1", ["ip", "-o", "-4", "addr", "show", "lab0"],
                         capture_output=True, text=True).stdout
    assert f"inet {new.address}/24" in out
    with pytest.raises(labmod.LabError, match="no host 'w9'"):
        labmod.exec_in(state.name, "w9", ["true"])


def test_swarm_formation_with_stand_in_daemon(lab_factory: LabFactory,
                                              fake_shoald: list[str]) -> None:
    state = lab_factory(2, 2, daemon_argv=fake_shoald)
    nodes = state.hosts[0].client().get("/nodes")
    assert sorted(n["Status"]["Addr"] for n in nodes) == sorted(h.address for h in state.hosts)
    assert {n["ID"] for n in nodes} == {h.node_id for h in state.hosts}
    # A restarted daemon gets its API waited for.
    labmod.kill_host(state.name, "w1", signal.SIGKILL)
    assert labmod.start_host(state.name, "w1").client().get("/_ping") == "OK"


def test_up_refuses_bad_names_and_existing_labs(lab_factory: LabFactory) -> None:
    for bad in ("", "UPPER", "has-dash", "toolongname"):
        with pytest.raises(labmod.LabError, match="invalid lab name"):
            labmod.up(bad, 1, 0, form_swarm=False, daemon_argv=SLEEPER)
    state = lab_factory(1, 0, form_swarm=False, daemon_argv=SLEEPER)
    with pytest.raises(labmod.LabError, match="already exists"):
        labmod.up(state.name, 1, 0, form_swarm=False, daemon_argv=SLEEPER)
    assert labmod.status(state.name).host("m1").alive


def test_down_half_created_and_unknown(lab_name: str) -> None:
    sdir = labmod.state_dir(lab_name)
    try:
        sdir.mkdir(parents=True)  # no lab.json yet: up died right after claiming the name
        for host in ("sw", "m1"):
            subprocess.run(["ip", "netns", "add", labmod.namespace(lab_name, host)], check=True)
        labmod.down(lab_name)
        assert f"shl-{lab_name}-" not in _netns_list()
        assert not sdir.exists()
        with pytest.raises(labmod.LabError, match="no lab named"):
            labmod.down(lab_name)
    finally:
        teardown_lab(lab_name)


def test_daemon_that_dies_is_reported(lab_factory: LabFactory) -> None:
    argv = ["sh", "-c", "echo 'cannot start: boom' >&2; exit 3"]
    with pytest.raises(labmod.LabError, match=r"m1: shoald exited(.|\n)*boom(.|\n)*lab down"):
        lab_factory(1, 0, daemon_argv=argv)


def test_cli(lab_factory: LabFactory, lab_name: str) -> None:
    runner = CliRunner()
    state = lab_factory(1, 1, form_swarm=False, daemon_argv=SLEEPER)
    result = runner.invoke(lab_cli, ["status", "--name", state.name, "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [h["name"] for h in doc["hosts"]] == ["m1", "w1"]
    assert doc["engine"] == f"unix://{state.state_dir}/engine/docker.sock"
    assert all(h["alive"] and h["engine"] == doc["engine"] for h in doc["hosts"])
    assert doc["hosts"][0]["api"] == "unix://" + doc["hosts"][0]["api_socket"]
    table = runner.invoke(lab_cli, ["status", "--name", state.name])
    assert table.exit_code == 0 and "w1" in table.output and state.hosts[1].address in table.output
    result = runner.invoke(lab_cli, ["exec", "--name", state.name, "w1", "--",
                                     "sh", "-c", "exit 5"])
    assert result.exit_code == 5
    result = runner.invoke(lab_cli, ["down", "--name", state.name])
    assert result.exit_code == 0, result.output
    _assert_gone(state, [h.pid for h in state.hosts if h.pid])
    for args in (["down", "--name", state.name], ["status", "--name", lab_name],
                 ["up", "--name", "Bad!"]):
        result = runner.invoke(lab_cli, args)
        assert result.exit_code == 1 and "Error:" in result.output, (args, result.output)
    try:
        result = runner.invoke(lab_cli, ["up", "--name", lab_name,
                                         "--engine", "unix:///nonexistent/docker.sock"])
        assert result.exit_code == 1 and "does not answer GET /_ping" in result.output
    finally:
        teardown_lab(lab_name)


def _docker(url: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=url, version="auto", timeout=60)


def _start_box(client: docker.DockerClient, node_id: str | None) -> str:
    labels = {engine_api.SWARM_NODE_LABEL: node_id} if node_id else {}
    box = client.containers.run("shoal/busybox:latest", ["sleep", "600"], network_mode="none",
                                detach=True, labels=labels)
    return str(box.id)


def test_lab_engine(lab_factory: LabFactory, fake_shoald: list[str]) -> None:
    """The lab's own dockerd: up, shared by the hosts, has the images; gone after down."""
    before = root_namespace_snapshot()
    state = lab_factory(1, 1, daemon_argv=[*fake_shoald, "--engine", "{engine}"])
    assert state.engine == f"unix://{state.state_dir}/engine/docker.sock"
    assert all(h.engine == state.engine and h.argv[-1] == state.engine for h in state.hosts)
    assert state.engine_pid and procs.alive(state.engine_pid)
    info = engine_api.api(state.engine, "GET", "/info")
    assert info["DockerRootDir"] == f"{state.state_dir}/engine/data"
    for tag in ("latest", "v1", "v2"):
        assert engine_api.has_image(state.engine, f"shoal/busybox:{tag}")
    client = _docker(state.engine)
    _start_box(client, state.hosts[1].node_id)
    _start_box(client, None)
    client.close()
    doc = json.loads(CliRunner().invoke(lab_cli, ["status", "--name", state.name,
                                                  "--format", "json"]).output)
    assert doc["engine_pid"] == state.engine_pid

    labmod.down(state.name)
    _assert_gone(state, [h.pid for h in state.hosts if h.pid])
    assert not engine_api.ping(state.engine)
    assert root_namespace_snapshot() == before


def test_lab_with_given_engine(lab_factory: LabFactory, fake_shoald: list[str],
                               engine: enginemod.Engine) -> None:
    """A given engine is used as it is; down removes only the lab's containers from it."""
    state = lab_factory(1, 1, daemon_argv=fake_shoald, engine=engine.socket)
    assert state.engine == engine.socket and state.engine_pid is None
    assert all(h.engine == engine.socket for h in state.hosts)
    assert not (Path(state.state_dir) / "engine").exists()
    client = _docker(engine.socket)
    ours = _start_box(client, state.hosts[1].node_id)
    others = [_start_box(client, "another-lab-node"), _start_box(client, None)]
    try:
        labmod.down(state.name)
        left = {c.id for c in client.containers.list(all=True)}
        assert ours not in left and set(others) <= left
        assert engine.running()
    finally:
        for cid in others:
            client.containers.get(cid).remove(force=True)
        client.close()


def test_full_swarm(lab_factory: LabFactory) -> None:
    """Real shoald processes: 3 managers and 2 workers, all ready, exactly one leader."""
    before = root_namespace_snapshot()
    state = lab_factory(3, 2)
    nodes = state.hosts[0].client().get("/nodes")
    assert len(nodes) == 5
    assert all(n["Status"]["State"] == "ready" for n in nodes)
    managers = [n for n in nodes if n.get("ManagerStatus")]
    assert len(managers) == 3
    assert sum(1 for n in managers if n["ManagerStatus"].get("Leader")) == 1
    assert {n["ID"] for n in nodes} == {h.node_id for h in state.hosts}
    assert sorted(n["Description"]["Hostname"] for n in nodes) == ["m1", "m2", "m3", "w1", "w2"]
    pids = [h.pid for h in state.hosts if h.pid]
    assert engine_api.ping(state.engine or "") and all(h.engine == state.engine
                                                      for h in state.hosts)
    assert all(h.argv[h.argv.index("--engine") + 1] == state.engine for h in state.hosts)

    # A restarted daemon keeps its data root, hence its node identity, and is ready again.
    labmod.stop_host(state.name, "w1")
    w1 = labmod.start_host(state.name, "w1")
    assert w1.client().get("/info")["Swarm"]["NodeID"] == state.host("w1").node_id
    client = state.hosts[0].client()
    wait_until(lambda: client.get(f"/nodes/{w1.node_id}")["Status"]["State"] == "ready", 30,
               "w1 to be ready again after its restart")
    pids.append(w1.pid or 0)

    labmod.down(state.name)
    _assert_gone(state, pids)
    assert root_namespace_snapshot() == before
