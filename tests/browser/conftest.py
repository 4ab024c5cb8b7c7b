"""Browser tests: Debian's Chromium, headless, driven by Playwright, against a
real ``salus serve`` (see ``live.py``).

Screenshots go to ``artifacts/screenshots/`` (or ``$SALUS_SCREENSHOT_DIR``),
which CI keeps as its artefacts. The tests are skipped, with the reason, when
Chromium or Playwright is missing (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.live import PASSWORD, LiveServer, live_server

CHROMIUM = os.environ.get("SALUS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(
    os.environ.get(
        "SALUS_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
    )
)
_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _skip_reason() -> str | None:
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Not for the session: Playwright's sync API
    keeps an asyncio loop running in this thread while it is open, and tests
    that run afterwards with ``asyncio.run`` would fail."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the whole browser session (start-up costs seconds)."""
    if _skip_reason():
        pytest.skip(_skip_reason() or "")
    # Every module signs in from 127.0.0.1 against this one server: the login rate
    # limit (20 a minute by default) is raised so that they do not lock each other out.
    with live_server(
        tmp_path_factory.mktemp("live"), SALUS_RATE_LIMIT_LOGIN_PER_MINUTE="600"
    ) as server:
        yield server


@pytest.fixture
def page(browser: Any, live: LiveServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) on a laptop-sized screen; a
    screenshot of the last state is saved whatever the outcome."""
    context = browser.new_context(
        base_url=live.base_url, viewport={"width": 1366, "height": 800}, locale="en-GB"
    )
    context.set_default_timeout(15_000)
    tab = context.new_page()
    try:
        yield tab
    finally:
        shot(tab, request.node.name + "-end")
        context.close()


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under a file-safe name."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120] + ".png")
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception:  # noqa: S110 - a closed page has nothing to show
        pass
    return path


def sign_in(page: Any, username: str, password: str = PASSWORD) -> None:
    """Sign in through the login form, as a person would (keyboard only)."""
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(re.compile(r".*/(?!login).*$"))
