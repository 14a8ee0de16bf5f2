"""Fixtures of the browser tests: the real server of the API tests (``tests/service/conftest.py``), seeded
with real digit PNGs through the API, and Debian's Chromium driven by Playwright's sync API.

Layers: ``browser`` (session: one Chromium; every test is skipped when it is not installed) → ``page`` (a fresh
context per test; a screenshot of its last state goes to ``var/test-output/ui/``; an uncaught script error
fails the test) → ``library_server`` (a server holding 40 USPS and 20 MNIST digits) → :func:`open_ui`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, FilePayload, Page, ViewportSize, expect, sync_playwright

from tests.conftest import DigitFolders
from tests.service import conftest as api_fixtures
from tests.service.conftest import API_KEY, REPO, LiveServer, StartServer, post_image
from workbench.chromium import CHROMIUM_ARGS

# The API tests' fixtures, shared: one tiny trained model, the digit PNGs, the server factory.
api_artefact = api_fixtures.api_artefact
digit_pngs = api_fixtures.digit_pngs
start_server = api_fixtures.start_server

CHROMIUM = Path(os.environ.get("METAH_TEST_CHROMIUM", "/usr/bin/chromium"))
OUTPUT = REPO / "var" / "test-output" / "ui"
VIEWPORT = ViewportSize(width=1280, height=860)
TIMEOUT_MS = 15_000  # for actions and expectations alike: the test machine may have 2 busy cores

PNGs = list[tuple[bytes, str]]


@pytest.fixture
def database_url() -> None:
    """SQLite only: the browser drives the same API that the API tests check on both databases."""


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (CI installs Debian's chromium package)")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    screenshot(page, re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name) + "-last")
    context.close()
    assert not script_errors, script_errors


def screenshot(page: Page, name: str) -> Path:
    """Save the visible page as ``var/test-output/ui/<name>.png``."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def upload(data: bytes, name: str = "query.png", media_type: str = "image/png") -> FilePayload:
    """A file for ``page.set_input_files``."""
    return FilePayload(name=name, mimeType=media_type, buffer=data)


def open_ui(page: Page, live: LiveServer, tab: str = "search", *, api_key: str | None = API_KEY) -> None:
    """Open the UI on ``tab`` and, when given, save the API key through its field."""
    page.goto(f"{live.base_url}/#{tab}")
    page.wait_for_selector("body[data-ready=true]")
    if api_key is not None:
        page.fill("#api-key", api_key)
        page.click("#key-form button")
        page.wait_for_selector("#key-state:text('saved')")


def mnist_pngs(digits: DigitFolders, n: int) -> PNGs:
    """``(PNG bytes, label)`` of ``n`` labelled MNIST digits, labels cycling."""
    files = sorted(digits.source.rglob("*.png"), key=lambda p: (p.stem, p.parent.name))
    return [(path.read_bytes(), path.parent.name) for path in files[:n]]


def seed(client: httpx.Client, pngs: PNGs, domain: str) -> list[int]:
    """Store the images through the API; their ids in order."""
    ids = []
    for data, label in pngs:
        response = post_image(client, data, label=label, domain=domain)
        assert response.status_code in (200, 201), response.text
        ids.append(int(response.json()["id"]))
    return ids


@pytest.fixture
def library_server(start_server: StartServer, digit_pngs: PNGs, digits: DigitFolders) -> LiveServer:
    """A server holding 40 labelled USPS digits (domain ``usps``) and 20 MNIST digits (domain ``mnist``)."""
    live = start_server()
    client = live.client()
    seed(client, digit_pngs[:40], "usps")
    seed(client, mnist_pngs(digits, 20), "mnist")
    return live
