"""The demo site in Chromium, page by page, as a visitor uses it; screenshots of each page
go to docs/screenshots/ (the ones docs/demo.md shows)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TIMEOUT_MS, chromium, chromium_path, need
from tests.servers import daphne, manage, sqlite_env

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need(chromium_path() is not None, "Chromium is not installed")
    tmp = tmp_path_factory.mktemp("demo")
    env = sqlite_env(tmp)
    with daphne(env, tmp / "daphne.log") as running:
        manage(env, "demo_setup")
        yield running.base


@pytest.fixture(scope="module")
def page(site: str) -> Iterator[Any]:
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1000, "height": 720})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(f"{site}/accounts/login/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("button[type=submit]")
        page.wait_for_url(f"{site}/")
        yield page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"demo-{name}.png"), full_page=True)


def test_home_lists_every_demo(page: Any, site: str) -> None:
    page.goto(f"{site}/")
    cards = page.locator(".demo-card h2").all_inner_texts()
    assert cards == [
        "Import a CSV", "Build a report", "Long countdown", "A failing sync", "My actions", "Admin",
    ]  # fmt: skip
    shot(page, "home")


def test_csv_import_reads_rows_one_by_one_and_reports_bad_ones(
    page: Any, site: str, tmp_path: Path
) -> None:
    with urllib.request.urlopen(f"{site}/import/sample.csv") as response:
        sample = response.read()
    upload = tmp_path / "people.csv"
    upload.write_bytes(sample)
    page.goto(f"{site}/import/")
    shot(page, "import-form")
    page.set_input_files("input[name=file]", str(upload))
    page.fill("input[name=seconds_per_row]", "0.25")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/import/processing/"))
    page.wait_for_function(
        "document.querySelector('[role=progressbar]').getAttribute('aria-valuenow') > 20"
    )
    assert "Row " in page.inner_text("async-action-progress")
    shot(page, "import-processing")
    page.wait_for_url(re.compile(r"/import/result/"))
    assert page.inner_text("[data-testid=imported]") == "10"
    assert "twelve" in page.inner_text("table")  # the bad rows, listed
    shot(page, "import-result")


def test_report_ends_with_a_csv_download(page: Any, site: str) -> None:
    page.goto(f"{site}/reports/")
    page.fill("input[name=seconds_per_stage]", "0.5")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/reports/processing/"))
    page.wait_for_function(
        "document.querySelector('async-action-progress').innerText.includes('Stage 2')"
    )
    shot(page, "report-processing")
    page.wait_for_url(re.compile(r"/reports/result/"))
    shot(page, "report-result")
    link = page.locator(".aa-files a.aa-file__link")
    assert link.inner_text() == "report.csv"
    with page.expect_download() as download_info:
        link.click()
    assert download_info.value.suggested_filename == "report.csv"
    lines = Path(download_info.value.path()).read_text().splitlines()
    assert lines[0] == "row,value"
    assert lines[-1].startswith("total,")
    # The link is the owner's: a visitor without the session gets what a missing file gets.
    href = link.get_attribute("href")
    assert re.fullmatch(r"/reports/file/[0-9a-f-]{36}/\d+/", href), href
    owner = page.context.request.get(f"{site}{href}")
    assert owner.status == 200 and owner.headers["content-type"].startswith("text/csv")
    assert owner.headers["content-disposition"] == 'attachment; filename="report.csv"'
    # The API lists the same file with its own download URL, for the same visitor only.
    pk = re.search(r"/result/([0-9a-f-]{36})/", page.url).group(1)
    listed = page.context.request.get(f"{site}/api/actions/{pk}/").json()["files"]
    assert [(f["name"], f["kind"]) for f in listed] == [("report.csv", "output")]
    api_file = page.context.request.get(listed[0]["url"])
    assert (
        api_file.status == 200 and api_file.body() == Path(download_info.value.path()).read_bytes()
    )
    anonymous = page.context.browser.new_context()
    try:
        assert anonymous.request.get(f"{site}{href}").status == 404
        assert anonymous.request.get(listed[0]["url"]).status == 401
    finally:
        anonymous.close()


def test_countdown_can_be_cancelled_from_the_processing_page(page: Any, site: str) -> None:
    page.goto(f"{site}/countdown/")
    page.fill("input[name=seconds]", "120")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/countdown/processing/"))
    page.wait_for_function(
        "document.querySelector('async-action-progress').innerText.includes('seconds left')"
    )
    shot(page, "countdown-processing")
    page.get_by_role("button", name=re.compile("Cancel", re.I)).click()
    page.wait_for_url(re.compile(r"/countdown/result/"))
    assert "ancel" in page.inner_text(".aa-card")
    shot(page, "countdown-cancelled")


def test_failing_sync_shows_a_readable_error(page: Any, site: str) -> None:
    page.goto(f"{site}/sync/")
    page.fill("input[name=fail_at]", "30")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/sync/result/"))
    text = page.inner_text(".aa-card")
    assert "account 4711 is locked" in text
    assert "Traceback" not in text  # demo is not staff
    shot(page, "failing")


def test_my_actions_lists_everything_live_and_starts_a_perform_function(
    page: Any, site: str
) -> None:
    page.goto(f"{site}/mine/")
    before = page.locator("[data-testid=action-row]").count()
    assert before >= 4  # the demos above
    page.click("[data-testid=perform]")
    page.wait_for_url(f"{site}/mine/")
    assert page.locator("[data-testid=action-row]").count() == before + 1
    first = page.locator("[data-testid=action-row]").first
    assert "make_thumbnails" in first.inner_text()
    page.wait_for_function(
        "document.querySelector('[data-testid=action-row] async-action-progress')"
        ".innerText.includes('Thumbnail')"
    )
    shot(page, "my-actions")
    # The same action through the API, with the session the browser holds.
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    request = urllib.request.Request(
        f"{site}/api/actions/?handler=example_project.demo.tasks.make_thumbnails",
        headers={"Cookie": f"sessionid={cookies['sessionid']}"},
    )
    with urllib.request.urlopen(request) as response:
        listed = json.loads(response.read())
    assert listed["count"] == 1
    assert listed["results"][0]["status"] in ("pending", "running", "succeeded")
