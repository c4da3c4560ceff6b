"""End to end in headless Chromium against a real daphne serving the example project.

The action runs on a worker thread inside daphne and its progress reaches the browser
through the in-memory channel layer: the embedded default, proved end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TIMEOUT_MS, chromium, chromium_path, need
from tests.servers import daphne, sqlite_env

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "screenshots" / "processing.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A daphne process serving the example project on a migrated, private SQLite file."""
    need(chromium_path() is not None, "Chromium is not installed")
    tmp = tmp_path_factory.mktemp("daphne")
    with daphne(sqlite_env(tmp), tmp / "daphne.log") as running:
        yield running.base


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Any]:
    with chromium() as instance:
        yield instance


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 900, "height": 640})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


RECORDER = """
document.addEventListener("aa:update", (event) => {
  const a = event.detail;
  const bar = document.querySelector('[role="progressbar"]');
  window.aaSeen({status: a.status, percent: a.percent, message: a.message, seq: a.seq,
                 title: document.title, valuenow: bar.getAttribute("aria-valuenow")});
});
"""


def record(page: Any) -> list[dict[str, Any]]:
    """Every update the element applies in ``page``, across navigations."""
    seen: list[dict[str, Any]] = []
    page.expose_function("aaSeen", lambda update: seen.append(update))
    page.add_init_script(RECORDER)
    return seen


def submit_report(page: Any, server: str, *, rows: int = 6, seconds: float = 0.5) -> str:
    page.goto(f"{server}/reports/")
    page.fill("input[name=title]", "Browser test")
    page.fill("input[name=rows]", str(rows))
    page.fill("input[name=seconds_per_stage]", str(seconds))
    page.click("button[type=submit]")
    page.wait_for_url("**/reports/processing/**")
    return page.url


def wait_result(page: Any) -> None:
    page.wait_for_url("**/reports/result/**", timeout=TIMEOUT_MS)


def test_submitting_the_form_moves_the_bar_and_lands_on_the_result(
    context: Any, server: str
) -> None:
    page = context.new_page()
    seen = record(page)
    frames: list[str] = []
    polls: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
    page.on("request", lambda request: "/status/" in request.url and polls.append(request.url))
    submit_report(page, server, rows=4, seconds=1.0)
    bar = page.locator('[role="progressbar"]')
    page.wait_for_function(
        "Number(document.querySelector('[role=progressbar]').getAttribute('aria-valuenow')) >= 40"
        " && document.querySelector('[data-aa=eta]').textContent.includes('left')"
    )
    assert "%" in page.title()
    assert page.locator('[data-aa="elapsed"]').inner_text().startswith("Elapsed")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), animations="disabled")
    assert int(bar.get_attribute("aria-valuenow")) >= 40
    wait_result(page)
    assert page.locator("[data-testid=total]").inner_text() == str(
        sum((i * 37) % 101 for i in range(4))
    )
    percents = [update["percent"] for update in seen]
    assert any(0 < p < 100 for p in percents), percents
    assert percents == sorted(percents)
    assert seen[-1]["status"] == "succeeded"
    assert any(update["title"].startswith("60%") for update in seen), seen
    # Live over the WebSocket: worker thread -> in-memory layer -> daphne's loop -> browser.
    assert not polls, polls
    assert sum('"status": "running"' in frame for frame in frames) >= 5, frames
    assert any('"status": "succeeded"' in frame for frame in frames)


def test_two_tabs_on_one_action_both_see_every_stage(context: Any, server: str) -> None:
    first = context.new_page()
    first_seen = record(first)
    url = submit_report(first, server, seconds=1.5)
    second = context.new_page()
    second_seen = record(second)
    second.goto(url)
    wait_result(first)
    wait_result(second)
    stages = {f"Stage {n} of 5" for n in range(1, 6)}
    for seen in (first_seen, second_seen):
        messages = {update["message"].split(":")[0] for update in seen}
        assert stages <= messages, messages
        assert seen[-1]["status"] == "succeeded"


def test_with_websockets_blocked_polling_still_reaches_the_result(
    context: Any, server: str
) -> None:
    page = context.new_page()
    page.route_web_socket("**/ws/async-actions/**", lambda ws: ws.close(code=1011))
    polls: list[str] = []
    page.on("request", lambda request: "/status/" in request.url and polls.append(request.url))
    seen = record(page)
    submit_report(page, server, seconds=0.5)
    wait_result(page)
    assert polls, "the element never polled the status JSON"
    assert seen[-1]["status"] == "succeeded"


def test_without_javascript_the_meta_refresh_reaches_the_result(browser: Any, server: str) -> None:
    ctx = browser.new_context(java_script_enabled=False)
    try:
        page = ctx.new_page()
        submit_report(page, server, seconds=0.3)
        assert page.locator('[role="progressbar"]').count() == 1
        wait_result(page)
        assert page.locator("[data-testid=total]").is_visible()
    finally:
        ctx.close()


def test_the_cancel_button_lands_on_the_cancelled_page(context: Any, server: str) -> None:
    page = context.new_page()
    submit_report(page, server, seconds=5)
    button = page.locator('[data-aa="cancel"]')
    button.wait_for(state="visible")
    button.click()
    wait_result(page)
    assert "cancelled" in page.locator(".aa-status").inner_text().lower()


def test_a_network_failure_shows_a_readable_message(context: Any, server: str) -> None:
    page = context.new_page()
    page.route_web_socket("**/ws/async-actions/**", lambda ws: ws.close(code=1011))
    url = submit_report(page, server, seconds=3)
    page.route("**/status/**", lambda route: route.abort())
    page.goto(url)
    notice = page.locator('[data-aa="notice"]')
    notice.wait_for(state="visible")
    assert "Cannot reach the server" in notice.inner_text()
    page.locator('[data-aa="cancel"]').click()  # leave nothing running


STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:"
)


def strict_policy(page: Any, refused: list[str]) -> None:
    """Serve every page ``page`` loads with :data:`STRICT_CSP`; what it refuses is
    logged to ``refused``."""

    def with_policy(route: Any) -> None:
        if route.request.resource_type != "document" or route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch(max_redirects=0)
        headers = {**response.headers, "content-security-policy": STRICT_CSP}
        route.fulfill(response=response, headers=headers)

    page.route("**/*", with_policy)
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and refused.append(message.text),
    )


def test_the_bar_draws_under_a_strict_content_security_policy_without_its_script(
    browser: Any, server: str
) -> None:
    """The server-rendered bar has its width without a style attribute, which a strict
    CSP (no 'unsafe-inline' styles) refuses: it drew at its minimum until the script ran."""
    ctx = browser.new_context(java_script_enabled=False)
    ctx.set_default_timeout(TIMEOUT_MS)
    refused: list[str] = []
    try:
        page = ctx.new_page()
        url = submit_report(page, server, rows=6, seconds=1.0)
        strict_policy(page, refused)
        percent = 0
        for _ in range(40):
            page.goto(url)
            if "/processing/" not in page.url:
                break
            percent = int(page.locator('[role="progressbar"]').get_attribute("aria-valuenow"))
            if percent >= 20:
                break
            page.wait_for_timeout(200)
        assert percent >= 20, "the action never reached 20% while the test looked"
        fill, track = (
            page.locator(selector).evaluate("node => node.getBoundingClientRect().width")
            for selector in ('[data-aa="fill"]', '[data-aa="bar"]')
        )
        assert abs(fill - track * percent / 100) <= 2, (fill, track, percent)
        assert refused == []
    finally:
        ctx.close()


def test_the_pages_work_under_a_strict_content_security_policy(context: Any, server: str) -> None:
    """No inline style (or script, but the fallback's, which takes the site's nonce)
    that a site's strict CSP would refuse, and the bar moves to the result."""
    page = context.new_page()
    refused: list[str] = []
    url = submit_report(page, server, rows=6, seconds=0.4)
    strict_policy(page, refused)
    page.goto(url)
    wait_result(page)
    assert page.locator("[data-testid=total]").is_visible()
    # The fallback's small inline script needs the site's nonce (docs/views.md); without
    # one it is refused, harmlessly, since progress.js runs. Nothing else may be.
    assert [text for text in refused if "inline script" not in text] == [], refused
