"""The `shoal` CLI (swarm and node commands) against a fake daemon on a unix socket.

The fake records every request (method, path, query, JSON body) and answers with canned,
Docker-shaped JSON, so the tests check both what each command sends and what it prints.
"""

from __future__ import annotations

import copy
import http.server
import json
import socketserver
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from shoal.cli.main import cli
from shoal.cli.output import (
    format_duration,
    format_table,
    human_duration,
    natural_key,
    parse_duration,
    parse_filters,
)
from shoal.cli.swarm import normalize_listen_addr

SELF_ID = "n1selfaaaaaaaaaaaaaaaaaaa"
WORKER_TOKEN = "SWMTKN-1-digest-workersecret"
MANAGER_TOKEN = "SWMTKN-1-digest-managersecret"


def make_node(node_id: str, host: str, role: str, state: str = "ready",
              availability: str = "active", leader: bool = False,
              reachability: str = "reachable", addr: str = "198.18.0.1:2377",
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    n: dict[str, Any] = {
        "ID": node_id,
        "Version": {"Index": 42},
        "Spec": {"Labels": labels or {}, "Role": role, "Availability": availability},
        "Description": {"Hostname": host, "Engine": {"EngineVersion": "20.10.24"}},
        "Status": {"State": state, "Addr": addr.split(":")[0]},
    }
    if role == "manager":
        n["ManagerStatus"] = {"Leader": leader, "Reachability": reachability, "Addr": addr}
    return n


NODES = [
    make_node("n3workerccccccccccccccccc", "host10", "worker", state="down",
              availability="drain", labels={"zone": "a"}),
    make_node("n2managerbbbbbbbbbbbbbbbb", "host2", "manager", reachability="unreachable",
              addr="198.18.0.2:2377"),
    make_node(SELF_ID, "host1", "manager", leader=True),
]
SWARM = {
    "ID": "clusterid",
    "Version": {"Index": 7},
    "Spec": {"Name": "default", "Labels": {}, "Orchestration": {"TaskHistoryRetentionLimit": 5},
             "Dispatcher": {"HeartbeatPeriod": 5_000_000_000}},
    "JoinTokens": {"Worker": WORKER_TOKEN, "Manager": MANAGER_TOKEN},
}
INFO = {"Swarm": {"NodeID": SELF_ID, "LocalNodeState": "active", "ControlAvailable": True}}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class FakeDaemon:
    """A tiny Engine-API look-alike: canned answers per (method, path), every request logged."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[Request] = []
        daemon = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                daemon.requests.append(Request(self.command, url.path, query,
                                               json.loads(raw) if raw else None))
                status, body = daemon.routes.get(
                    (self.command, url.path), (404, {"message": f"page not found: {url.path}"}))
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = socketserver.UnixStreamServer(str(socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)

    def route(self, method: str, path: str, body: Any = None, status: int = 200) -> None:
        self.routes[(method, path)] = (status, copy.deepcopy(body))

    def sent(self, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if method is None or r.method == method]

    def calls(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["-H", f"unix://{self.socket_path}", *args])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    sock = tmp_path / "shoal.sock"
    short_dir = None
    if len(str(sock)) > 100:  # AF_UNIX paths are limited to ~108 bytes
        short_dir = tempfile.TemporaryDirectory(prefix="shoal")
        sock = Path(short_dir.name) / "s.sock"
    fake = FakeDaemon(sock)
    fake.route("GET", "/swarm", SWARM)
    fake.route("GET", "/info", INFO)
    fake.route("GET", "/nodes", NODES)
    for n in NODES:
        fake.route("GET", f"/nodes/{n['ID']}", n)
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    if short_dir:
        short_dir.cleanup()


# ---------------------------------------------------------------- swarm


def test_swarm_init_sends_docker_body_and_prints_join_command(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/swarm/init", SELF_ID)
    result = daemon.run("swarm", "init", "--advertise-addr", "198.18.0.1",
                        "--cert-expiry", "2160h", "--dispatcher-heartbeat", "1m30s",
                        "--task-history-limit", "3", "--availability", "drain")
    assert result.exit_code == 0, result.output
    body = daemon.sent("POST")[0].body
    assert body["ListenAddr"] == "0.0.0.0:2377"
    assert body["AdvertiseAddr"] == "198.18.0.1"
    assert body["Availability"] == "drain"
    assert body["Spec"]["CAConfig"] == {"NodeCertExpiry": 2160 * 3600 * 10**9}
    assert body["Spec"]["Dispatcher"] == {"HeartbeatPeriod": 90 * 10**9}
    assert body["Spec"]["Orchestration"] == {"TaskHistoryRetentionLimit": 3}
    assert result.stdout == (
        f"Swarm initialized: current node ({SELF_ID}) is now a manager.\n\n"
        "To add a worker to this swarm, run the following command:\n\n"
        f"    shoal swarm join --token {WORKER_TOKEN} 198.18.0.1:2377\n\n"
        "To add a manager to this swarm, run 'shoal swarm join-token manager' "
        "and follow the instructions.\n\n")
    assert daemon.calls() == ["POST /swarm/init", f"GET /nodes/{SELF_ID}", "GET /swarm"]


def test_swarm_init_defaults_leave_spec_empty(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/swarm/init", SELF_ID)
    result = daemon.run("swarm", "init", "--advertise-addr", "198.18.0.1",
                        "--listen-addr", "198.18.0.1")
    assert result.exit_code == 0, result.output
    body = daemon.sent("POST")[0].body
    assert body["ListenAddr"] == "198.18.0.1:2377"
    assert body["Availability"] == ""
    assert body["Spec"]["CAConfig"] == {} and body["Spec"]["Dispatcher"] == {}
    assert body["Spec"]["Orchestration"] == {}


@pytest.mark.parametrize("control, role", [(False, "worker"), (True, "manager")])
def test_swarm_join(daemon: FakeDaemon, control: bool, role: str) -> None:
    daemon.route("POST", "/swarm/join", None)
    daemon.route("GET", "/info", {"Swarm": {"NodeID": "x", "ControlAvailable": control}})
    result = daemon.run("swarm", "join", "--token", WORKER_TOKEN, "--advertise-addr",
                        "198.18.0.5", "--availability", "pause", "198.18.0.1:2377")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"This node joined a swarm as a {role}.\n"
    assert daemon.sent("POST")[0].body == {
        "ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "198.18.0.5", "DataPathAddr": "",
        "RemoteAddrs": ["198.18.0.1:2377"], "JoinToken": WORKER_TOKEN, "Availability": "pause"}
    assert daemon.calls() == ["POST /swarm/join", "GET /info"]


def test_join_token_prints_command_with_local_manager_addr(daemon: FakeDaemon) -> None:
    result = daemon.run("swarm", "join-token", "manager")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "To add a manager to this swarm, run the following command:\n\n"
        f"    shoal swarm join --token {MANAGER_TOKEN} 198.18.0.1:2377\n\n")
    assert daemon.calls() == ["GET /swarm", "GET /info", f"GET /nodes/{SELF_ID}"]


def test_join_token_quiet_prints_only_the_token(daemon: FakeDaemon) -> None:
    result = daemon.run("swarm", "join-token", "-q", "worker")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{WORKER_TOKEN}\n"
    assert daemon.calls() == ["GET /swarm"]


def test_join_token_rotate_posts_spec_with_version(daemon: FakeDaemon) -> None:
    daemon.route("POST", "/swarm/update", None)
    result = daemon.run("swarm", "join-token", "--rotate", "-q", "worker")
    assert result.exit_code == 0, result.output
    assert daemon.calls() == ["GET /swarm", "POST /swarm/update", "GET /swarm"]
    update = daemon.sent("POST")[0]
    assert update.query == {"version": "7", "rotateWorkerToken": "true",
                            "rotateManagerToken": "false", "rotateManagerUnlockKey": "false"}
    assert update.body == SWARM["Spec"]
    assert result.stdout == f"{WORKER_TOKEN}\n"


@pytest.mark.parametrize("args, query", [((), {}), (("--force",), {"force": "1"})])
def test_swarm_leave(daemon: FakeDaemon, args: tuple[str, ...], query: dict[str, str]) -> None:
    daemon.route("POST", "/swarm/leave", None)
    result = daemon.run("swarm", "leave", *args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "Node left the swarm.\n"
    assert daemon.sent("POST")[0].query == query


def test_swarm_inspect_prints_json(daemon: FakeDaemon) -> None:
    result = daemon.run("swarm", "inspect", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == SWARM


# ---------------------------------------------------------------- node ls / inspect


def test_node_ls_table(daemon: FakeDaemon) -> None:
    result = daemon.run("node", "ls")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER",
                                "STATUS", "ENGINE", "VERSION"]
    for column in ("HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"):
        assert f"   {column}" in lines[0]
    rows = [line.split() for line in lines[1:]]
    assert rows == [
        [SELF_ID, "*", "host1", "Ready", "Active", "Leader", "20.10.24"],
        ["n2managerbbbbbbbbbbbbbbbb", "host2", "Ready", "Active", "Unreachable", "20.10.24"],
        ["n3workerccccccccccccccccc", "host10", "Down", "Drain", "20.10.24"],
    ]
    # columns line up under their headers
    start = lines[0].index("HOSTNAME")
    assert all(line[start:].startswith(h) for line, h in
               zip(lines[1:], ["host1", "host2", "host10"], strict=True))
    assert daemon.calls() == ["GET /nodes", "GET /info"]


def test_node_ls_json_and_filters(daemon: FakeDaemon) -> None:
    result = daemon.run("node", "ls", "--format", "json", "-f", "role=manager",
                        "--filter", "name=host1")
    assert result.exit_code == 0, result.output
    nodes = json.loads(result.stdout)
    assert isinstance(nodes, list)
    assert {n["ID"] for n in nodes} == {n["ID"] for n in NODES}
    filters = json.loads(daemon.requests[0].query["filters"])
    assert filters == {"role": {"manager": True}, "name": {"host1": True}}


def test_node_inspect_self_and_name(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/nodes/host2", NODES[1])
    result = daemon.run("node", "inspect", "self", "host2")
    assert result.exit_code == 0, result.output
    assert [n["ID"] for n in json.loads(result.stdout)] == [SELF_ID, NODES[1]["ID"]]
    assert daemon.calls() == ["GET /info", f"GET /nodes/{SELF_ID}", "GET /nodes/host2"]


def test_node_inspect_missing_prints_found_then_error(daemon: FakeDaemon) -> None:
    daemon.route("GET", "/nodes/ghost", {"message": "node ghost not found"}, status=404)
    result = daemon.run("node", "inspect", SELF_ID, "ghost")
    assert result.exit_code == 1
    assert [n["ID"] for n in json.loads(result.stdout)] == [SELF_ID]
    assert result.stderr == "Error response from daemon: node ghost not found\n"


# ---------------------------------------------------------------- node update / roles / rm


def test_node_update_sends_version_and_full_spec(daemon: FakeDaemon) -> None:
    node_id = NODES[0]["ID"]
    daemon.route("POST", f"/nodes/{node_id}/update", None)
    result = daemon.run("node", "update", "--availability", "active", "--label-add", "disk=ssd",
                        "--label-add", "zone=b", "--label-add", "flag", node_id)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{node_id}\n"
    update = daemon.sent("POST")[0]
    assert update.query == {"version": "42"}
    assert update.body == {"Name": "", "Labels": {"zone": "b", "disk": "ssd", "flag": ""},
                           "Role": "worker", "Availability": "active"}


def test_node_update_by_name_posts_to_id(daemon: FakeDaemon) -> None:
    node_id = NODES[0]["ID"]
    daemon.route("GET", "/nodes/host10", NODES[0])
    daemon.route("POST", f"/nodes/{node_id}/update", None)
    result = daemon.run("node", "update", "--label-rm", "zone", "--role", "manager", "host10")
    assert result.exit_code == 0, result.output
    assert result.stdout == "host10\n"
    assert daemon.calls() == ["GET /nodes/host10", f"POST /nodes/{node_id}/update"]
    assert daemon.sent("POST")[0].body["Labels"] == {}
    assert daemon.sent("POST")[0].body["Role"] == "manager"


def test_node_update_label_rm_missing_key_sends_nothing(daemon: FakeDaemon) -> None:
    result = daemon.run("node", "update", "--label-rm", "rack", NODES[0]["ID"])
    assert result.exit_code == 1
    assert result.stderr == "key rack doesn't exist in node's labels\n"
    assert daemon.sent("POST") == []


def test_node_promote_and_already_manager(daemon: FakeDaemon) -> None:
    worker = NODES[0]["ID"]
    daemon.route("POST", f"/nodes/{worker}/update", None)
    result = daemon.run("node", "promote", worker, SELF_ID)
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"Node {worker} promoted to a manager in the swarm.\n"
                             f"Node {SELF_ID} is already a manager.\n")
    [update] = daemon.sent("POST")
    assert update.body["Role"] == "manager" and update.query == {"version": "42"}
    assert update.body["Labels"] == {"zone": "a"} and update.body["Availability"] == "drain"


def test_node_demote_and_already_worker(daemon: FakeDaemon) -> None:
    manager, worker = NODES[1]["ID"], NODES[0]["ID"]
    daemon.route("POST", f"/nodes/{manager}/update", None)
    result = daemon.run("node", "demote", manager, worker)
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"Manager {manager} demoted in the swarm.\n"
                             f"Node {worker} is already a worker.\n")
    assert [r.body["Role"] for r in daemon.sent("POST")] == ["worker"]


def test_node_rm_force_and_continue_after_error(daemon: FakeDaemon) -> None:
    daemon.route("DELETE", "/nodes/a", {"message": "node a is not down"}, status=400)
    daemon.route("DELETE", "/nodes/b", None)
    result = daemon.run("node", "rm", "a", "b")
    assert result.exit_code == 1
    assert result.stdout == "b\n"
    assert result.stderr == "Error response from daemon: node a is not down\n"
    assert daemon.calls() == ["DELETE /nodes/a", "DELETE /nodes/b"]
    assert daemon.run("node", "rm", "--force", "b").stdout == "b\n"
    assert [r.query for r in daemon.requests] == [{}, {}, {"force": "1"}]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("args, named", [
    (("swarm", "init", "--cert-expiry", "90 days"), "--cert-expiry"),
    (("swarm", "init", "--dispatcher-heartbeat", "5"), "--dispatcher-heartbeat"),
    (("swarm", "init", "--listen-addr", "1.2.3.4:http"), "--listen-addr"),
    (("swarm", "join", "198.18.0.1:2377"), "--token"),
    (("swarm", "join-token", "admin"), "admin"),
    (("node", "ls", "-f", "role"), "--filter"),
    (("node", "update", "--availability", "gone", "x"), "--availability"),
])
def test_usage_errors_exit_2_and_send_nothing(daemon: FakeDaemon, args: tuple[str, ...],
                                              named: str) -> None:
    result = daemon.run(*args)
    assert result.exit_code == 2
    assert named in result.stderr
    assert daemon.requests == []


@pytest.mark.parametrize("status, message", [
    (404, "node nope not found"),
    (500, "update out of sequence"),
    (503, 'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
          "to connect this node to swarm and try again."),
])
def test_daemon_errors_exit_1(daemon: FakeDaemon, status: int, message: str) -> None:
    daemon.route("GET", "/nodes", {"message": message}, status=status)
    daemon.route("GET", "/swarm", {"message": message}, status=status)
    for args in (("node", "ls"), ("swarm", "inspect"), ("swarm", "join-token", "worker")):
        result = daemon.run(*args)
        assert result.exit_code == 1
        assert result.stderr == f"Error response from daemon: {message}\n"
        assert result.stdout == ""


def test_connection_failure_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["-H", f"unix://{tmp_path}/absent.sock", "node", "ls"])
    assert result.exit_code == 1
    assert result.stderr.startswith("cannot connect to the Shoal daemon")


def test_host_from_environment(daemon: FakeDaemon) -> None:
    result = CliRunner().invoke(cli, ["swarm", "join-token", "-q", "worker"],
                                env={"SHOAL_HOST": f"unix://{daemon.socket_path}"})
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{WORKER_TOKEN}\n"


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("90s", 90 * 10**9), ("1m30s", 90 * 10**9), ("2160h", 2160 * 3600 * 10**9),
    ("500ms", 500 * 10**6), ("1.5h", 5400 * 10**9), ("1h2m3.5s", 3723_500_000_000),
    ("10us", 10_000), ("10µs", 10_000), ("7ns", 7), ("-2s", -2 * 10**9), (".5s", 5 * 10**8),
])
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "5", "s", "1x", "1.s.", "1h 2m", "3 days", "."])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (90 * 10**9, "1m30s"), (3600 * 10**9, "1h0m0s"), (1_500_000_000, "1.5s"),
    (500 * 10**6, "500ms"), (1_500, "1.5µs"), (7, "7ns"), (2160 * 3600 * 10**9, "2160h0m0s"),
])
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text
    assert parse_duration(text) == ns


@pytest.mark.parametrize("seconds, text", [
    (0.5, "Less than a second"), (1, "1 second"), (45, "45 seconds"), (60, "About a minute"),
    (300, "5 minutes"), (3600, "About an hour"), (5 * 3600, "5 hours"), (3 * 86400, "3 days"),
])
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_format_table_pads_like_tabwriter() -> None:
    table = format_table(["ID", "NAME", "MODE"], [["abc", "web", "replicated"],
                                                  ["abcdefghijklm", "x", "global"]])
    assert table.splitlines() == [
        "ID              NAME      MODE",
        "abc             web       replicated",
        "abcdefghijklm   x         global",
    ]


def test_natural_sort_and_filters() -> None:
    assert sorted(["host10", "host2", "host1"], key=natural_key) == ["host1", "host2", "host10"]
    assert parse_filters(["role=manager", "role=worker", "label=a=b"]) == {
        "role": {"manager": True, "worker": True}, "label": {"a=b": True}}
    with pytest.raises(click.BadParameter):
        parse_filters(["nokey"])


@pytest.mark.parametrize("value, addr", [
    ("0.0.0.0:2377", "0.0.0.0:2377"), ("198.18.0.1", "198.18.0.1:2377"),
    (":4000", "0.0.0.0:4000"), ("[::1]:2377", "[::1]:2377"), ("[::1]", "[::1]:2377"),
])
def test_normalize_listen_addr(value: str, addr: str) -> None:
    assert normalize_listen_addr(value) == addr
