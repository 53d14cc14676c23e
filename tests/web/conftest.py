"""Fixtures of the browser tests: a Chromium profile per test module, and the site they open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pe.child import ServeProcess
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield context
        context.close()


@pytest.fixture
def site(edge: ServeProcess) -> ServeProcess:
    """The suite's shared `pe serve` (tests/conftest.py), which serves the site too."""
    return edge
