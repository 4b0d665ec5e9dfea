"""Issue 10 item 3: the web dashboard in a real headless browser (Debian's chromium driven by
Selenium and chromedriver), through `shoal dashboard`, the local read-only proxy to a
manager's socket, on a lab of a manager and a worker. The page is loaded once; the test
changes the cluster with the shoal CLI and waits for the page to show it without a reload:
scaling a service grows the task grid, draining the worker moves its tasks to the manager,
the event feed names both changes, and a task that cannot be placed shows why."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from shoal.lab import HostState, LabState
from tests.system.conftest import module_lab, wait_until
from tests.system.helpers import SHOAL, ok, request, shoal
from tests.system.svc import IMAGE

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


lab = module_lab()


@pytest.fixture(scope="module")
def proxy(lab: LabState) -> Iterator[str]:
    """`shoal dashboard --port 0` on the manager: the URL it prints."""
    yield from start_proxy(lab)


@pytest.fixture(scope="module")
def acting_proxy(lab: LabState) -> Iterator[str]:
    yield from start_proxy(lab, "--allow-actions")


def start_proxy(lab: LabState, *args: str) -> Iterator[str]:
    proc = subprocess.Popen([SHOAL, "-H", lab.host("m1").api, "dashboard", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if match := re.match(r"^(http://127\.0\.0\.1:\d+/dashboard/)$", line.strip()):
                url = match.group(1)
                break
        assert url, (proc.poll(), proc.stderr.read() if proc.stderr else "")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def grid(browser: webdriver.Chrome, service: str) -> dict[str, list[str]]:
    """The task grid as shown: node name -> states of `service`'s tasks in its column."""
    return browser.execute_script("""
        const out = {};
        for (const col of document.querySelectorAll('#grid .node-col')) {
          out[col.dataset.node] = [...col.querySelectorAll('.task')]
            .filter((t) => t.dataset.service === arguments[0]).map((t) => t.dataset.state);
        }
        return out;""", service)


# Reads run as one script in the page (between two of its redraws), never element by
# element from here: a redraw between finding an element and reading it would make it stale.
def cell(browser: webdriver.Chrome, table: str, row: str, field: str) -> str:
    return str(browser.execute_script(
        "const c = document.querySelector(arguments[0]); return c ? c.textContent : '';",
        f"#{table} tr[data-{table[:-1]}='{row}'] [data-field='{field}']"))


def texts(browser: webdriver.Chrome, selector: str) -> list[str]:
    return list(browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent);",
        selector))


def feed(browser: webdriver.Chrome) -> list[str]:
    return texts(browser, "#events li")


def click(browser: webdriver.Chrome, selector: str) -> None:
    """A real click (WebDriver's) on the element `selector` names, again if a redraw
    replaced it under the pointer."""
    def once() -> bool:
        try:
            found = browser.find_elements(By.CSS_SELECTOR, selector)
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False
    wait_until(once, 10, f"a click on {selector}")


def running_on(browser: webdriver.Chrome, service: str) -> dict[str, int]:
    return {node: states.count("running") for node, states in grid(browser, service).items()}


def test_the_dashboard_follows_the_cluster_live(lab: LabState, proxy: str,
                                                browser: webdriver.Chrome) -> None:
    m1 = lab.host("m1")
    ok(shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "2",
             IMAGE, "sleep", "3600"))
    browser.get(proxy)
    browser.execute_script("window.notReloaded = true;")
    wait_until(lambda: running_on(browser, "web") == {"m1": 1, "w1": 1}, 60,
               "the grid to show web's 2 tasks running, one per node")
    assert cell(browser, "nodes", "m1", "manager") == "Leader"
    assert cell(browser, "nodes", "w1", "role") == "worker"
    assert {cell(browser, "nodes", n, "state") for n in ("m1", "w1")} == {"ready"}
    wait_until(lambda: cell(browser, "services", "web", "replicas") == "2/2", 30,
               "the services table to show web 2/2")
    wait_until(lambda: texts(browser, "#status") == ["live"], 30,
               "the event stream to be connected")

    ok(shoal(m1, "service", "scale", "-d", "web=4"))
    wait_until(lambda: sum(running_on(browser, "web").values()) == 4, 60,
               "the grid to show web scaled to 4 running tasks")
    wait_until(lambda: cell(browser, "services", "web", "replicas") == "4/4", 30,
               "the services table to show web 4/4")
    wait_until(lambda: any("service update web" in e and "replicas: 2 → 4" in e
                           for e in feed(browser)), 30, "the feed to show the scale")

    ok(shoal(m1, "node", "update", "--availability", "drain", "w1"))
    wait_until(lambda: running_on(browser, "web") == {"m1": 4, "w1": 0}, 90,
               "the grid to show w1's tasks moved to m1")
    w1_column = browser.execute_script("return document.querySelector(arguments[0])"
                                       ".dataset.availability", "#grid .node-col[data-node='w1']")
    assert w1_column == "drain"
    assert cell(browser, "nodes", "w1", "availability") == "drain"
    wait_until(lambda: any("node update w1" in e and "availability: active → drain" in e
                           for e in feed(browser)), 30, "the feed to show the drain")
    assert browser.execute_script("return window.notReloaded === true;"), "the page reloaded"
    assert browser.execute_script(  # present in the page, hidden (offsetParent is null)
        "return [...document.querySelectorAll('button[data-action]')]"
        ".filter((b) => b.offsetParent !== null).length") == 0, "a read-only page offers actions"


def test_the_dashboard_says_why_a_task_cannot_be_placed(lab: LabState, proxy: str,
                                                       browser: webdriver.Chrome) -> None:
    ok(shoal(lab.host("m1"), "service", "create", "-d", "--name", "nowhere",
             "--constraint", "node.labels.zone==mars", IMAGE, "sleep", "3600"))
    browser.get(proxy)
    reason = wait_until(lambda: texts(browser, "#unplaced li[data-service='nowhere']"), 60,
        "the page to list nowhere's task as unplaceable")
    assert "no suitable node" in reason[0] and "constraint" in reason[0], reason
    states = grid(browser, "nowhere")
    assert states.get("") == ["pending"], states  # the "not assigned" column


def test_with_actions_allowed_the_page_scales_and_drains(lab: LabState, acting_proxy: str,
                                                        browser: webdriver.Chrome) -> None:
    m1 = lab.host("m1")
    ok(shoal(m1, "service", "create", "-d", "--name", "act", IMAGE, "sleep", "3600"))
    browser.get(acting_proxy)
    wait_until(lambda: sum(running_on(browser, "act").values()) == 1, 60,
               "the grid to show act's task running")

    click(browser, "#services tr[data-service='act'] button[data-action='scale-up']")
    wait_until(lambda: cell(browser, "services", "act", "replicas") == "2/2", 60,
               "act scaled to 2 from the page")
    click(browser, "#services tr[data-service='act'] button[data-action='scale-up']")
    wait_until(lambda: sum(running_on(browser, "act").values()) == 3, 60,
               "the grid to show act's 3 tasks")
    assert m1.client().get("/services/act")["Spec"]["Mode"]["Replicated"]["Replicas"] == 3

    before = cell(browser, "nodes", "w1", "availability")
    click(browser, "#nodes tr[data-node='w1'] button[data-action]")
    after = "active" if before == "drain" else "drain"
    wait_until(lambda: cell(browser, "nodes", "w1", "availability") == after, 30,
               f"w1 to become {after} from the page")
    assert {n["Description"]["Hostname"]: n["Spec"]["Availability"]
            for n in m1.client().get("/nodes")}["w1"] == after
    assert "done" in texts(browser, "#notice")[0]


def test_actions_are_taken_only_from_the_page(acting_proxy: str) -> None:
    base = acting_proxy.removesuffix("/dashboard/")
    status, _, body = _get(base + "/services/act/update?version=1", method="POST",
                           headers={"Content-Type": "text/plain"})
    assert status == 403 and b"X-Shoal-Dashboard" in body, body
    status, _, body = _get(base + "/services/act/update?version=1", method="POST",
                           headers={"Content-Type": "application/json",
                                    "X-Shoal-Dashboard": "1", "Origin": "http://evil.example"})
    assert status == 403 and b"evil.example" in body, body
    status, _, body = _get(base + "/services/create", method="POST",
                           headers={"Content-Type": "application/json", "X-Shoal-Dashboard": "1"})
    assert status == 405, body


def _get(url: str, method: str = "GET",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_proxy_is_read_only_and_forwards_only_what_the_page_reads(proxy: str) -> None:
    base = proxy.removesuffix("/dashboard/")
    status, headers, body = _get(proxy)
    assert status == 200 and headers["Content-Type"].startswith("text/html"), body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = _get(base + "/nodes")
    assert status == 200 and {n["Description"]["Hostname"] for n in json.loads(body)} == \
        {"m1", "w1"}
    status, _, body = _get(base + "/services/web", method="DELETE")
    assert status == 405 and b"--allow-actions" in body
    status, _, body = _get(base + "/services/web/update?version=1", method="POST",
                           headers={"Content-Type": "application/json", "X-Shoal-Dashboard": "1"})
    assert status == 405 and b"--allow-actions" in body
    status, _, _ = _get(base + "/dashboard/proxy.json")
    assert status == 200
    for path in ("/swarm", "/secrets", "/containers/json", "/services/web/logs"):
        status, _, body = _get(base + path)
        assert status == 403 and b"does not forward" in body, (path, body)
    port = base.rsplit(":", 1)[1]
    status, _, body = _get(base + "/nodes", headers={"Host": f"rebound.example:{port}"})
    assert status == 403 and b"answers only to" in body


def test_workers_serve_no_dashboard(lab: LabState) -> None:
    w1: HostState = lab.host("w1")
    status, _, body = request(w1, "GET", "/dashboard/")
    assert status == 503 and b"not a swarm manager" in body, body
    out = shoal(w1, "dashboard", "--port", "0")
    assert out.returncode == 1 and "not a swarm manager" in out.stderr, out.stderr
    status, _, body = request(lab.host("m1"), "GET", "/dashboard/app.js")
    assert status == 200 and b"getReader" in body
