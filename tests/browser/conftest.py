"""Headless Chromium (Debian's ``chromium``) driven by Playwright, against real gateways.

The browser comes from apt (``make test-system`` or ``make chromium`` installs it; see the
Makefile), never from ``playwright install``. Each test gets a fresh profile. Every test
fails if the page throws or logs a JavaScript error; "Failed to load resource" lines are
the browser's own notes about HTTP error statuses, which the console handles and shows,
so they are not errors of the page. Screenshots go to ``<tmp>/screenshots``; with
``SAGE_UPDATE_SCREENSHOTS=1`` the ones docs/studio.md shows are also copied to
``docs/studio/``.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "studio"
ADMIN_TOKEN = "studio-admin-token"
AGENT_TOKEN = "studio-agent-token"
"""What a (fake) agent on another host sends with its reports: with an admin token set,
reports to the gateway need the agent token too."""
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAST_AGENT = {
    "SAGE_AGENT_PROBE_INTERVAL_S": "0.5",
    "SAGE_AGENT_HEARTBEAT_INTERVAL_S": "1",
    "SAGE_AGENT_DRAIN_PROPAGATION_S": "0.5",
}


# Module scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it lives, and every async test collected after this folder would fail
# ("Cannot run the event loop while another loop is running").
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make chromium` (or `make test-system`) as root "
            "once (it installs Debian's chromium), or `apt-get install chromium`",
            pytrace=False,
        )
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def shoot(screenshot_dir: Path) -> Callable[..., Path]:
    """``shoot(page, name, docs=False)``: a PNG of the viewport (copied to docs/studio/
    with ``docs=True`` when SAGE_UPDATE_SCREENSHOTS=1)."""

    def take(page: Page, name: str, *, docs: bool = False, full_page: bool = False) -> Path:
        path = screenshot_dir / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", caret="hide", full_page=full_page)
        if docs and os.environ.get("SAGE_UPDATE_SCREENSHOTS") == "1":
            DOCS_SHOTS.mkdir(exist_ok=True)
            shutil.copyfile(path, DOCS_SHOTS / path.name)
        return path

    return take


class PageErrors:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console.error: {message.text}")


@pytest.fixture
def browser_context(playwright: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(CHROMIUM),
        args=ARGS,
        viewport={"width": 1280, "height": 800},
        service_workers="block",
    )
    context.set_default_timeout(30_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    """A page whose JavaScript errors fail the test."""
    errors = PageErrors()
    page = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    errors.watch(page)
    yield page
    assert errors.errors == [], f"the page logged JavaScript errors: {errors.errors}"


@pytest.fixture
def studio_gateway(start_gateway):  # type: ignore[no-untyped-def]
    """A gateway (embedded control plane + local agent) with an admin token."""
    # Engines get ports away from 8900-8999, which other suites on this machine use.
    low = random.randrange(30_000, 60_000, 100)
    ports = {"SAGE_AGENT_ENGINE_PORT_RANGE": f"{low}-{low + 99}"}
    return start_gateway(
        env={
            "SAGE_ADMIN_TOKEN": ADMIN_TOKEN,
            "SAGE_AGENT_TOKEN": AGENT_TOKEN,
            **FAST_AGENT,
            **ports,
        }
    )


def enter_token(page: Page, token: str = ADMIN_TOKEN) -> None:
    page.get_by_role("button", name="Credentials").click()
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Save").click()


@pytest.fixture
def login() -> Callable[..., None]:
    return enter_token
