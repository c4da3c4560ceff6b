"""docs/quickstart.md, followed in a fresh project: startproject, the documented edits,
migrate, runserver, and the page through to its result in Chromium.

The shell steps run as written except ``pip install`` (this environment has the package
installed already, as the step leaves it) and the address: runserver gets a free port.
Each code block names its file and whether it replaces the file or is appended to it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM_ARGS, TIMEOUT_MS, chromium_path, need
from tests.servers import ROOT, free_port, wait_http

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOC = ROOT / "docs" / "quickstart.md"
FILE_BLOCK = re.compile(r"```python\n# file: (\S+) \((replace|append)\)\n(.*?)```", re.S)
SHELL_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def _run(command: str, cwd: Path, env: dict) -> None:
    done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"


def test_the_quickstart_gives_a_working_processing_page(tmp_path: Path) -> None:
    need(chromium_path() is not None, "Chromium is not installed")
    text = DOC.read_text()
    shells = [block.strip().splitlines() for block in SHELL_BLOCK.findall(text)]
    setup, serve = shells[0], shells[-1]
    assert setup[0].startswith("pip install django-async-actions")
    assert serve == ["python manage.py migrate", "python manage.py runserver"]
    bin_dir = str(Path(sys.executable).parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")
    }
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    cwd = tmp_path
    for command in setup[1:]:
        if command.startswith("cd "):
            cwd = cwd / command[3:].strip()
            continue
        _run(command.replace("python ", f"{sys.executable} ", 1), cwd, env)
    for path, mode, body in FILE_BLOCK.findall(text):
        target = cwd / path
        assert target.exists(), f"the quickstart edits {path}, which startproject made"
        if mode == "replace":
            target.write_text(body)
        else:
            target.write_text(target.read_text() + "\n" + body)
    _run(f"{sys.executable} manage.py migrate", cwd, env)
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
            assert "'counted': 10" in page.inner_text("body")
            browser.close()
        # The bar moved live: the page saw progress messages before the result.
        assert any(message.startswith("Counted to") for message in seen), seen
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]
