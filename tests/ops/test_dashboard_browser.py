"""The dashboard in a real headless Chromium (Debian ``chromium``, driven by Playwright).

A leader and a standby, workers in two pods; the test submits tasks and watches the
page change as they run and finish: busy workers with their task and duration,
results streaming in, failed tasks with their errors, group throughput, the standby
naming the leader, and the token prompt of a master started with ``--token``.
Screenshots go to ``artifacts/``.

Needs ``/usr/bin/chromium`` (``.ci/install-browser`` installs it) and the
``playwright`` package; without them the tests skip, or fail under
``MAWEX_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mawex
from mawex.cluster import LocalCluster
from tests.ops.conftest import ARTIFACTS, get_state, missing, start_master, url_of
from tests.polling import wait_until

CHROMIUM = os.environ.get("MAWEX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SLOW = "mawex.examples.demo:sleep"
DEMO = "mawex.examples.demo:Demo"
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM}: run .ci/install-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_dashboard_follows_a_running_cluster(cluster: LocalCluster, page: Any) -> None:
    from playwright.sync_api import expect

    leader = start_master(cluster, "master-a")
    leader_url = url_of(leader)
    assert cluster.wait_leader(timeout=30) is leader
    standby = start_master(cluster, "master-b")
    cluster.start_worker("worker-slow", SLOW, groups="slow", pod="pod-1")
    cluster.start_worker(
        "worker-demo", DEMO, groups="etl,reports", pod="pod-2", args={"delay_ms": "5"}
    )
    cluster.wait_workers(3)

    page.goto(leader_url + "/")
    expect(page.locator("#role")).to_have_text("leader", timeout=UI_TIMEOUT_MS)
    epoch = get_state(leader_url)["epoch"]
    expect(page.locator("#epoch")).to_have_text(str(epoch))
    expect(page.locator("#conn")).to_have_text("live", timeout=UI_TIMEOUT_MS)
    pod1 = page.locator('.pod[data-pod="pod-1"]')
    pod2 = page.locator('.pod[data-pod="pod-2"]')
    expect(pod1).to_have_attribute("data-busy", "false", timeout=UI_TIMEOUT_MS)
    expect(pod2.locator("tr[data-worker]")).to_have_count(2)
    slow_worker = pod1.locator("tr[data-worker]")
    expect(slow_worker).to_have_attribute("data-status", "idle")
    expect(slow_worker.locator(".sandbox")).to_have_text("local")
    expect(page.locator("#results tbody tr[data-type]")).to_have_count(0)
    expect(page.locator("#results-note")).to_contain_text("WebSocket")

    with mawex.Client([leader_url]) as client:
        # a slow task: its worker turns busy with it, for a growing time
        client.submit("slow", {"seconds": 8}, id="slow-1")
        expect(slow_worker).to_have_attribute("data-status", "busy", timeout=UI_TIMEOUT_MS)
        expect(slow_worker.locator(".task")).to_have_text("slow/slow-1 #1")
        expect(pod1).to_have_attribute("data-busy", "true")
        expect(pod1.locator("h3 .state")).to_contain_text("slow/slow-1")
        expect(slow_worker.locator(".for")).to_have_text(re.compile(r"^\d+\.\d s$"))
        first_for = _seconds(slow_worker.locator(".for").inner_text())
        wait_until(
            lambda: _seconds(slow_worker.locator(".for").inner_text()) > first_for,
            10,
            "the busy duration to grow",
        )
        expect(
            page.locator('#results tbody tr[data-type="scheduled"][data-key="slow/slow-1"]')
        ).to_have_count(1, timeout=UI_TIMEOUT_MS)
        _screenshot(page, "dashboard-busy.png")

        # quick tasks, two of which fail for good with their error
        tasks = [
            {"id": f"etl-{i}", "group": "etl", "payload": {"values": [i, i]}} for i in range(20)
        ]
        tasks += [
            {"id": f"bad-{i}", "group": "reports", "payload": {"fail": True}, "max_attempts": 2}
            for i in range(2)
        ]
        client.submit_many(tasks)
        for i in range(2):
            with pytest.raises(mawex.TaskFailed):
                client.result("reports", f"bad-{i}", timeout=60)
        for i in range(20):
            client.result("etl", f"etl-{i}", timeout=60)
        assert client.result("slow", "slow-1", timeout=60) == {"slept": 8.0}

    completed = page.locator('#results tbody tr[data-type="completed"]')
    expect(completed).to_have_count(21, timeout=UI_TIMEOUT_MS)
    expect(page.locator('#results tbody tr[data-type="retrying"]')).to_have_count(2)
    failed = page.locator("#failed tbody tr[data-key]")
    expect(failed).to_have_count(2, timeout=UI_TIMEOUT_MS)
    expect(page.locator('#failed tbody tr[data-key="reports/bad-0"] .err')).to_contain_text(
        "demo task bad-0 asked to fail (attempt 2)"
    )
    etl = page.locator('#groups tbody tr[data-group="etl"]')
    expect(etl.locator(".done-min")).to_have_text("20", timeout=UI_TIMEOUT_MS)
    expect(etl.locator(".pending")).to_have_text("0")
    expect(page.locator('.tile[data-count="completed"] b')).to_have_text("21")
    expect(page.locator('.tile[data-count="failed"] b')).to_have_text("2")
    expect(slow_worker).to_have_attribute("data-status", "idle", timeout=UI_TIMEOUT_MS)
    expect(pod1).to_have_attribute("data-busy", "false")
    _screenshot(page, "dashboard.png")

    # the standby's page says so and names the leader
    page.goto(url_of(standby) + "/")
    expect(page.locator("#role")).to_have_text("standby", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#leader-link")).to_have_text(leader_url, timeout=UI_TIMEOUT_MS)
    expect(page.locator("#leader-link")).to_have_attribute("href", leader_url + "/")
    # both masters announce themselves in the journal: each page lists them
    expect(page.locator('#masters tbody tr[data-role="leader"]')).to_have_count(
        1, timeout=UI_TIMEOUT_MS
    )
    expect(page.locator('#masters tbody tr[data-role="standby"]')).to_have_count(1)
    expect(page.locator('#masters tbody tr[data-role="leader"] a')).to_have_text(leader_url)
    # workers are connected to the leader, and the standby says where to see them
    expect(page.locator("#pods-on-leader a")).to_have_text(leader_url)
    # standbys serve the result topic too
    expect(page.locator('#results tbody tr[data-type="completed"]')).to_have_count(
        21, timeout=UI_TIMEOUT_MS
    )
    _screenshot(page, "dashboard-standby.png")


def test_dashboard_asks_for_the_token(cluster: LocalCluster, page: Any) -> None:
    from playwright.sync_api import expect

    cluster.token = "s3cret-token"
    master = start_master(cluster, "master")
    url = url_of(master)
    cluster.wait_leader(timeout=30)

    page.goto(url + "/")
    form = page.locator("#auth")
    expect(form).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.locator("#main")).to_be_hidden()
    page.fill("#token", "wrong")
    page.click("#auth button")
    expect(page.locator("#auth-error")).to_have_text(
        "That token was refused.", timeout=UI_TIMEOUT_MS
    )
    _screenshot(page, "dashboard-token.png")
    page.fill("#token", "s3cret-token")
    page.click("#auth button")
    expect(page.locator("#role")).to_have_text("leader", timeout=UI_TIMEOUT_MS)
    expect(form).to_be_hidden()
    # a browser WebSocket cannot send the token header: the page long-polls instead
    expect(page.locator("#results-note")).to_contain_text("long poll")

    with mawex.Client([url], token="s3cret-token") as client:
        client.submit("g", {"n": 1}, id="with-token")
        client.cancel("g", "with-token")
        client.submit("g", {"n": 2}, id="pending")
    expect(page.locator('#groups tbody tr[data-group="g"] .pending')).to_have_text(
        "1", timeout=UI_TIMEOUT_MS
    )
    expect(page.locator('#results tbody tr[data-type="cancelled"]')).to_have_count(
        1, timeout=UI_TIMEOUT_MS
    )
    # the token is asked once per tab: a reload goes straight to the dashboard
    page.reload()
    expect(page.locator("#role")).to_have_text("leader", timeout=UI_TIMEOUT_MS)
    expect(form).to_be_hidden()


def test_docs_page_renders_the_openapi_document(cluster: LocalCluster, page: Any) -> None:
    from playwright.sync_api import expect

    master = start_master(cluster, "master")
    page.goto(url_of(master) + "/docs")
    expect(page.locator("#title")).to_contain_text("mawex master")
    expect(page.locator('details[id="post /v1/tasks"] summary')).to_contain_text("Submit a task")
    expect(page.locator('details[id="schema-TaskIn"]')).to_have_count(1)


def _seconds(text: str) -> float:
    match = re.match(r"^(\d+(?:\.\d+)?) s$", text.strip())
    return float(match.group(1)) if match else -1.0
