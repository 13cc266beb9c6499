"""Fixtures of the dashboard tests: a real `bertctl server` process with the fake trainer, Debian's
Chromium driven by Playwright, and a screenshot of the page whenever a test fails.

Screenshots go to $BERTCTL_TEST_ARTIFACTS/ui (default: test-artifacts/ui at the repository root)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.manager.conftest import FAKE_TRAINER
from tests.manager.procs import ServerProcess, free_port, terminal

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("BERTCTL_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "ui"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`bertctl server` on a free loopback port; jobs still running at the end are cancelled first."""
    srv = ServerProcess(tmp_path_factory.mktemp("ui") / "data", free_port(), trainer_command=FAKE_TRAINER).start()
    yield srv
    try:
        for job in srv.http.get("/v1/jobs").json()["jobs"]:
            if not terminal(job):
                srv.http.post(f"/v1/jobs/{job['id']}/cancel")
                srv.wait(job["id"], terminal, timeout_s=30)
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Browser:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


class Console:
    """Everything the page logged as an error, and uncaught exceptions."""

    def __init__(self, page: Page):
        self.errors: list[str] = []
        page.on("console", lambda msg: self.errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type in ("error", "assert") else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.console = Console(pg)
    yield pg
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(pg.console.errors) + "\n")
        print(f"screenshot of the failing page: {ARTIFACTS / (name + '.png')}")
    context.close()
