"""In Chromium: text a handler reports (HTML, script) is shown as text, never run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TIMEOUT_MS, chromium_path, need
from tests.helpers import chromium as launch_chromium
from tests.servers import daphne, sqlite_env

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'


@pytest.fixture(scope="module")
def test_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """daphne serving the test settings (example project + test views)."""
    need(chromium_path() is not None, "Chromium is not installed")
    tmp = tmp_path_factory.mktemp("daphne-tests")
    with daphne(sqlite_env(tmp, "tests.settings"), tmp / "daphne.log") as running:
        yield running.base


@pytest.fixture(scope="module")
def chromium(test_server: str) -> Iterator[Any]:
    with launch_chromium() as instance:
        yield instance


def test_html_in_progress_message_and_result_is_shown_as_text(
    test_server: str, chromium: Any
) -> None:
    page = chromium.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{test_server}/t/shout/")
    page.evaluate(
        """([text]) => {
            const form = document.querySelector('form');
            for (const [name, value] of [['text', text], ['hold', '2']]) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = name; input.value = value;
                form.appendChild(input);
            }
            form.submit();
        }""",
        [PAYLOAD],
    )
    page.wait_for_url("**/processing/**")
    page.wait_for_function(
        "(t) => document.body.innerText.includes(t)", arg="<script>window.__xss=2</script>"
    )
    assert page.evaluate("window.__xss") is None
    assert page.locator("b", has_text="bold").count() == 0
    page.wait_for_url("**/result/**")
    assert page.evaluate("window.__xss") is None
    assert page.locator("script", has_text="__xss").count() == 0
    assert dialogs == []
    page.close()
