"""A delayed start in headless Chromium: the pending page says "Scheduled for …" in the
viewer's own time zone, then lands on the result once the time has come (issue 17
item 3). The server runs in UTC; the browser in Tokyo (UTC+9)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.helpers import TIMEOUT_MS, chromium, chromium_path, need
from tests.servers import daphne, sqlite_env

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """daphne on the test settings (their URLs mount ``LaterView`` at /t/later/)."""
    need(chromium_path() is not None, "Chromium is not installed")
    tmp = tmp_path_factory.mktemp("daphne")
    with daphne(sqlite_env(tmp, "tests.settings"), tmp / "daphne.log") as running:
        yield running.base


@pytest.fixture
def tokyo(server: str) -> Iterator[Any]:
    with chromium() as browser:
        context = browser.new_context(timezone_id="Asia/Tokyo", locale="en-US")
        context.set_default_timeout(TIMEOUT_MS)
        yield context


def test_the_pending_page_says_when_in_the_viewers_zone_then_shows_the_result(
    tokyo: Any, server: str
) -> None:
    page = tokyo.new_page()
    page.goto(f"{server}/t/later/")
    page.fill("input[name=seconds]", "4")
    page.click("button[type=submit]")
    page.wait_for_url("**/t/later/processing/**")
    schedule = page.locator('[data-aa="schedule"]')
    schedule.wait_for(state="visible")
    text = schedule.inner_text()
    assert text.startswith("Scheduled for ")
    assert "GMT+9" in text  # the browser's zone, not the server's UTC
    instant = page.locator('[data-aa="schedule-time"]').get_attribute("datetime")
    when = datetime.fromisoformat(instant)
    tokyo_hour = (when.hour + 9) % 24
    assert re.search(rf"\b0?{tokyo_hour % 12 or 12}:{when.minute:02d}\b", text), text
    status_url = page.url.replace("/processing/", "/status/")
    page.wait_for_url("**/t/later/result/**", timeout=TIMEOUT_MS)
    state = page.request.get(status_url).json()
    assert state["status"] == "succeeded"
    assert datetime.fromisoformat(state["started_at"]) >= when
