"""Issue 8, item 2 (last part): a container started outside any service, through the
engine, joins an --attachable network with `network connect` and reaches the services on
it by address and by name; a network that is not attachable refuses it; `network rm`
refuses while it is attached; `network disconnect` takes its interface away."""

from __future__ import annotations

import secrets

import pytest

from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import shoal
from tests.system.overlay import IMAGE, SERVE, network_id, task_addr, wait_running
from tests.system.svc import engine

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


def run(container: object, *cmd: str) -> tuple[int, str]:
    result = container.exec_run(["timeout", "10", *cmd])  # type: ignore[attr-defined]
    return int(result.exit_code), result.output.decode(errors="replace")


@pytest.mark.lab(managers=1, workers=1)
def test_a_container_joins_an_attachable_network(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    assert shoal(m1, "network", "create", "--attachable", "shared").returncode == 0
    assert shoal(m1, "network", "create", "closed").returncode == 0
    shared = network_id(client, "shared")
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "2",
                "--network", "shared", IMAGE, *SERVE)
    assert out.returncode == 0, out.stderr
    web = wait_running(client, "web", 2)

    name = f"shl-attach-{secrets.token_hex(3)}"
    container = engine(lab).containers.run(IMAGE, ["sleep", "3600"], name=name, detach=True,
                                           network_mode="none", dns=["127.0.0.11"])
    try:
        out = shoal(m1, "network", "connect", "closed", name)
        assert out.returncode == 1 and "network closed is not attachable" in out.stderr
        out = shoal(m1, "network", "connect", "--alias", "outsider", "shared", name)
        assert out.returncode == 0, out.stderr
        # the interface arrives first and its address a moment later: wait for both
        code, addrs = wait_until(
            lambda: (r := run(container, "ip", "-4", "-o", "addr", "show", "dev", "eth0"))
            [0] == 0 and " inet " in r[1] and r, 30, "the container's address on the network")
        assert "10.0." in addrs, addrs
        for task in web:
            addr = task_addr(task, shared)
            code, text = run(container, "ping", "-c", "1", "-W", "3", addr)
            assert code == 0, text
        code, text = run(container, "sh", "-c", "wget -O - http://web:8080/hostname "
                                                "2>/dev/null")
        assert code == 0 and text.strip(), text
        out = shoal(m1, "network", "rm", "shared")
        assert out.returncode == 1 and "in use by service(s) web" in out.stderr
        out = shoal(m1, "network", "connect", "shared", name)
        assert out.returncode == 1 and "already on network shared" in out.stderr

        out = shoal(m1, "network", "disconnect", "shared", name)
        assert out.returncode == 0, out.stderr
        wait_until(lambda: run(container, "ip", "link", "show", "dev", "eth0")[0] != 0, 30,
                   "the container's interface to go")
    finally:
        container.remove(force=True)
