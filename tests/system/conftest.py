"""Shared fixtures for system tests: labs of real shoald processes in network namespaces.

- `lab_name`: a fresh lab name per test (a hash of the test id plus random hex, so a crashed
  earlier run or a parallel one never collides).
- `lab_factory`: `make(managers, workers, **kwargs)` brings a lab up; every lab it made is
  taken down at teardown, even when `up` failed half way.
- `lab`: one lab per test, sized by `@pytest.mark.lab(managers=3, workers=2, ...)` (keyword
  arguments go to `shoal.lab.up`; default one manager, no worker).
- `docker_config`: a private DOCKER_CONFIG directory per module, for `helpers.run_docker`.
- `engine`: one private dockerd for the session (shoal/engine.py) with the test images
  (`make images`) loaded; stopped and deleted at the end.

Teardown prints the end of each host's shoald log; pytest shows it when the test failed.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shoal import engine as enginemod
from shoal import engine_api
from shoal import lab as labmod

T = TypeVar("T")
LabFactory = Callable[..., labmod.LabState]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab(managers=1, workers=0, **kwargs): size of the `lab` fixture's lab")


def wait_until(check: Callable[[], T], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Poll `check` until it returns a truthy value, which is returned; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {result!r})")
        time.sleep(interval)


def root_namespace_snapshot() -> dict[str, str]:
    """The root namespace's interfaces, addresses and routes, to compare before/after."""
    commands = {"link": ["ip", "-o", "link"], "addr": ["ip", "-o", "addr"],
                "route": ["ip", "route"], "route6": ["ip", "-6", "route"]}
    return {key: subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            for key, argv in commands.items()}


def make_lab_name(nodeid: str) -> str:
    return "t" + hashlib.sha256(nodeid.encode()).hexdigest()[:3] + secrets.token_hex(2)


def print_logs(state: labmod.LabState, lines: int = 40) -> None:
    for host in state.hosts:
        try:
            tail = Path(host.log_file).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        print(f"----- {state.name}/{host.name}: {host.log_file} (last {lines} lines) -----")
        print("\n".join(tail))


def teardown_lab(name: str) -> None:
    """`down` the lab; nothing of it may remain (an `up` that never started is fine)."""
    state = labmod.try_load(name)
    if state is not None:
        print_logs(state)
    try:
        labmod.down(name)
    except labmod.LabError:
        if labmod.state_dir(name).exists() or labmod.lab_namespaces(name):
            raise


@pytest.fixture
def lab_name(request: pytest.FixtureRequest) -> str:
    return make_lab_name(request.node.nodeid)


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    names: list[str] = []

    def make(managers: int = 1, workers: int = 0, name: str | None = None,
             **kwargs: Any) -> labmod.LabState:
        name = name or make_lab_name(f"{request.node.nodeid}#{len(names)}")
        names.append(name)
        return labmod.up(name, managers, workers, **kwargs)

    yield make
    errors = []
    for name in reversed(names):
        try:
            teardown_lab(name)
        except labmod.LabError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_factory: LabFactory) -> labmod.LabState:
    marker = request.node.get_closest_marker("lab")
    kwargs = dict(marker.kwargs) if marker else {}
    return lab_factory(**kwargs)


def module_lab(managers: int = 1, workers: int = 1) -> Any:
    """A module-scoped `lab` fixture (one lab for every test of the module), for a test file
    to bind: `lab = module_lab(1, 0)`."""
    @pytest.fixture(scope="module", name="lab")
    def fixture(request: pytest.FixtureRequest) -> Iterator[labmod.LabState]:
        name = make_lab_name(request.module.__name__)
        try:
            yield labmod.up(name, managers, workers)
        finally:
            teardown_lab(name)
    return fixture


@pytest.fixture(scope="module")
def docker_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private DOCKER_CONFIG for `helpers.run_docker`: no user's contexts or credentials
    leak into the runs."""
    return tmp_path_factory.mktemp("docker-config")


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[enginemod.Engine]:
    """A bare private dockerd with the test images loaded, shared by the session's tests."""
    eng = enginemod.start_engine(tmp_path_factory.mktemp("eng"), "tests")
    try:
        for tarball in engine_api.image_tarballs():
            engine_api.load_image(eng, tarball)
        yield eng
    finally:
        eng.purge()
