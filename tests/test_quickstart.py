"""docs/quickstart.md, followed in a fresh project: startproject, the documented edits,
migrate, runserver, and the page through to its result in Chromium.

An override template goes where the quickstart says app overrides go, and wins; the
page's static files answer 200 under runserver and under plain daphne.

The shell steps run as written except ``pip install`` (this environment has the package
installed already, as the step leaves it) and the address: runserver gets a free port.
Each code block names its file and whether it replaces the file or is appended to it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_steps import (
    QUICKSTART,
    assert_static_served,
    follow_quickstart,
    project_env,
    run,
    shell_blocks,
)
from tests.helpers import CHROMIUM_ARGS, TIMEOUT_MS, chromium_path, need
from tests.servers import free_port, wait_http

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_quickstart_gives_a_working_processing_page(tmp_path: Path) -> None:
    need(chromium_path() is not None, "Chromium is not installed")
    text = QUICKSTART.read_text()
    serve = shell_blocks(text)[-1]
    assert serve == ["python manage.py migrate", "python manage.py runserver"]
    env = project_env()
    cwd = follow_quickstart(tmp_path, env)
    # Item 5: an override where the quickstart says overrides go wins over the app's.
    assert "reports/templates/async_actions/" in text
    override = cwd / "reports" / "templates" / "async_actions" / "result.html"
    override.parent.mkdir(parents=True)
    override.write_text(OVERRIDE)
    run("python manage.py migrate", cwd, env)
    port = free_port()
    log_file = open(tmp_path / "server.log", "w")  # noqa: SIM115 - the server writes it
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/count/", server)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
            )
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            seen: list[str] = []
            page.expose_function("aaSeen", lambda message: seen.append(message))
            page.add_init_script(
                'document.addEventListener("aa:update", e => window.aaSeen(e.detail.message));'
            )
            page.goto(f"{base}/count/")
            assert page.title().startswith("Count to ten")
            page.get_by_role("button", name="Start").click()
            page.wait_for_url(re.compile(r"/count/processing/"))
            page.wait_for_url(re.compile(r"/count/result/"), timeout=30_000)
            assert "Done" in page.inner_text("body")
            assert page.locator("[data-testid=override]").inner_text() == "From reports."
            row = page.locator("table.aa-response-table tr")
            assert row.locator("th").inner_text() == "counted"
            assert row.locator("td").inner_text() == "10"
            browser.close()
        # The bar moved live: the page saw progress messages before the result.
        assert any(message.startswith("Counted to") for message in seen), seen
        assert_static_served(base)  # runserver serves them itself
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    # Plain daphne, as deploy.md runs it: the quickstart's asgi.py serves static files.
    port = free_port()
    daphne = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port),
         "mysite.asgi:application"],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/count/", daphne)
        assert_static_served(f"http://127.0.0.1:{port}")
    finally:
        daphne.send_signal(signal.SIGTERM)
        try:
            daphne.wait(10)
        except subprocess.TimeoutExpired:
            daphne.kill()


OVERRIDE = """{% extends "async_actions/result.html" %}
{% block aa_result %}<p data-testid="override">From reports.</p>{{ block.super }}{% endblock %}
"""
