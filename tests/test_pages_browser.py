"""The action pages in Chromium where a browser shows the behaviour (issue 19 items 1, 6, 9):
the processing page without its script, every action's page link, the default result page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import TIMEOUT_MS, chromium, chromium_path, need
from tests.servers import Server, daphne, manage, sqlite_env

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """daphne serving the test settings (example project + test views)."""
    need(chromium_path() is not None, "Chromium is not installed")
    tmp = tmp_path_factory.mktemp("daphne-pages")
    with daphne(sqlite_env(tmp, "tests.settings"), tmp / "daphne.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    with chromium() as instance:
        yield instance


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def start(page: Any, url: str, **fields: str) -> None:
    """Open a BaseAsyncView's start page and submit it with ``fields`` added."""
    page.goto(url)
    page.evaluate(
        """(fields) => {
            const form = document.querySelector('form.aa-form');
            for (const [name, value] of Object.entries(fields)) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = name; input.value = value;
                form.appendChild(input);
            }
            form.submit();
        }""",
        fields,
    )
    page.wait_for_url(re.compile(r"/(processing|result)/"))


def documents(page: Any) -> list[str]:
    """Every page (document) the tab requests from now on."""
    seen: list[str] = []
    page.on("request", lambda r: r.resource_type == "document" and seen.append(r.url))
    return seen


# -- item 1: the processing page without its script -----------------------------------


@pytest.mark.parametrize("failure", ["aborted", "404", "broken"])
def test_processing_page_reaches_the_result_when_its_script_does_not_run(
    page: Any, server: Server, failure: str
) -> None:
    def fail(route: Any) -> None:
        if failure == "aborted":  # an ad blocker, a network error
            route.abort()
        elif failure == "404":  # static files not served
            route.fulfill(status=404, body="Not Found")
        else:  # served, but throws before it defines the element
            route.fulfill(status=200, content_type="text/javascript", body="throw new Error()")

    page.route("**/progress.js", fail)
    loads = documents(page)
    start(page, f"{server.base}/t/shout/", text="no script", hold="3")
    notice = page.locator('[data-aa="fallback-notice"]')
    notice.wait_for(state="visible")
    assert "reloads every 2 seconds" in notice.inner_text()
    # the plain form's Cancel button is there instead of the script's
    assert page.locator('form[action*="/cancel/"] button').is_visible()
    page.wait_for_url(re.compile(r"/t/shout/result/"), timeout=TIMEOUT_MS)
    assert "Done" in page.locator(".aa-status").inner_text()
    assert sum("/processing/" in url for url in loads) >= 2, loads  # it reloaded itself


def test_the_fallback_cancel_form_cancels_without_the_script(page: Any, server: Server) -> None:
    page.route("**/progress.js", lambda route: route.abort())
    start(page, f"{server.base}/t/gate/", gate="browser-fallback-cancel")  # never opens
    page.locator('form[action*="/cancel/"] button').click()
    page.wait_for_url(re.compile(r"/t/gate/result/"), timeout=TIMEOUT_MS)
    assert "Cancelled" in page.locator(".aa-status").inner_text()


def test_with_the_script_running_the_page_never_reloads_itself(page: Any, server: Server) -> None:
    loads = documents(page)
    start(page, f"{server.base}/t/shout/", text="live", hold="4")
    page.wait_for_selector("async-action-progress[data-aa-live]", state="attached")
    page.wait_for_url(re.compile(r"/t/shout/result/"), timeout=TIMEOUT_MS)
    assert sum("/processing/" in url for url in loads) == 1, loads
    assert page.locator('[data-aa="fallback-notice"]').count() == 0


# -- item 9: the default result page --------------------------------------------------


def test_default_result_page_shows_the_response_as_a_table(page: Any, server: Server) -> None:
    start(page, f"{server.base}/t/summary/")
    page.wait_for_url(re.compile(r"/t/summary/result/"), timeout=TIMEOUT_MS)
    table = page.locator("table.aa-response-table")
    rows = {
        row.locator("th").inner_text(): row.locator("td") for row in table.locator("tbody tr").all()
    }
    assert list(rows) == ["counted", "title", "ok", "missing", "rows"]
    assert rows["counted"].inner_text() == "10"
    assert rows["title"].inner_text() == "<b>Quarterly</b>"  # text, not markup
    assert rows["ok"].inner_text() == "true"
    assert rows["missing"].inner_text() == "null"
    nested = rows["rows"].locator("pre").inner_text()
    assert nested.startswith('[\n  {\n    "name": "a",')  # indented JSON
    body = page.inner_text("body")
    assert "{'" not in body and "True" not in body and "None" not in body  # no Python repr


# -- item 6: every action's link leads to its page ------------------------------------


@pytest.fixture(scope="module")
def boss(server: Server) -> tuple[str, str]:
    manage(
        server.env,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        "get_user_model().objects.create_superuser('boss', 'boss@example.com', 'pw')",
    )
    return "boss", "pw"


def log_in(page: Any, server: Server, user: tuple[str, str]) -> None:
    page.goto(f"{server.base}/accounts/login/")
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.base}/")


def test_admin_view_on_site_and_the_api_url_lead_to_the_actions_page(
    page: Any, server: Server, boss: tuple[str, str]
) -> None:
    log_in(page, server, boss)
    # an action a view started: its own processing page
    start(page, f"{server.base}/t/shout/", text="linked", hold="2")
    action_id = page.url.rstrip("/").rsplit("/", 1)[1]
    page.goto(f"{server.base}/admin/async_actions/action/{action_id}/change/")
    page.get_by_role("link", name="View on site").click()
    page.wait_for_url(re.compile(rf"/t/shout/(processing|result)/{action_id}/"))
    page.wait_for_url(re.compile(rf"/t/shout/result/{action_id}/"), timeout=TIMEOUT_MS)
    api = page.request.get(f"{server.base}/api/actions/{action_id}/").json()
    assert api["url"] == f"{server.base}/t/shout/processing/{action_id}/"
    # an action the API started: DEFAULT_ACTION_PAGE, the generic ActionView pages
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    created = page.request.post(
        f"{server.base}/api/actions/",
        data={"handler": "tests.echo", "request": {"from": "api"}},
        headers={"X-CSRFToken": csrf, "Referer": f"{server.base}/"},
    )
    assert created.status == 201, created.text()
    url = created.json()["url"]
    assert url == f"{server.base}/actions/processing/{created.json()['id']}/"
    page.goto(url)
    page.wait_for_url(re.compile(r"/actions/result/"), timeout=TIMEOUT_MS)
    row = page.locator("table.aa-response-table tr")
    assert row.locator("th").inner_text() == "echo"
    page.goto(f"{server.base}/admin/async_actions/action/{created.json()['id']}/change/")
    page.get_by_role("link", name="View on site").click()
    page.wait_for_url(re.compile(r"/actions/result/"))
