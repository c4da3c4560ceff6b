"""docs/quickstart.md, then docs/deploy.md's "Scale out your own project", followed in a
fresh project outside the repository: the reader's own ``mysite`` ends as a scaled site.

The doc's commands run as written, in one shell, with only what must differ per run
replaced: a fresh database name, free ports for the two web processes, and this
virtualenv (first on PATH) instead of a new one with ``pip install``. Then Chromium
starts the quickstart's count on web process 1 and watches its processing page on both
web processes to the result; a worker process, not daphne, ran it (the task's row names
its worker, the worker's log shows it); both web processes serve the static files with
``DEBUG`` off, from ``STATIC_ROOT``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.doc_steps import (
    apply_file_blocks,
    assert_static_served,
    follow_quickstart,
    project_env,
    shell_blocks,
)
from tests.helpers import (
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    chromium_path,
    need,
    postgres_available,
    redis_available,
)
from tests.servers import ROOT, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.browser, pytest.mark.slow]

DOC = ROOT / "docs" / "deploy.md"
HEADING = "## Scale out your own project"
#: What the doc names and a run must not share with other runs.
DOC_DATABASE, DOC_PORTS = "mysite_db", ("8001", "8002")
CHECK_MARK = "-- the check block"


def section() -> str:
    return DOC.read_text().split(f"\n{HEADING}\n", 1)[1].split("\n## ", 1)[0]


def psql(database: str, query: str) -> str:
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-tAc", query],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def stop_session(leader: int) -> None:
    """Stop every process the doc's shell started: they live in its session."""
    subprocess.run(["pkill", "-TERM", "-s", str(leader)], check=False)
    for _ in range(150):
        if subprocess.run(["pgrep", "-s", str(leader)], capture_output=True).returncode:
            return
        time.sleep(0.1)
    subprocess.run(["pkill", "-KILL", "-s", str(leader)], check=False)


def test_the_quickstart_project_scales_out_as_deploy_md_says(tmp_path: Path) -> None:
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    need(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    need(chromium_path() is not None, "Chromium is not installed")
    env = project_env()
    project = follow_quickstart(tmp_path, env)

    database = f"aa_quickstart_deploy_{uuid.uuid4().hex[:8]}"
    ports = (str(free_port()), str(free_port()))

    def adapt(text: str) -> str:
        text = text.replace(DOC_DATABASE, database)
        for documented, port in zip(DOC_PORTS, ports, strict=True):
            text = text.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{port}")
            text = text.replace(f"-p {documented} ", f"-p {port} ")
        return text

    text = adapt(section())
    install, start, check = shell_blocks(text)
    # The extras the doc installs exist (this environment has them already).
    [command] = install
    extras = re.fullmatch(r'pip install "django-async-actions\[([\w,-]+)\]"', command)
    assert extras, command
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(extras[1].split(",")) <= set(declared["optional-dependencies"]), command
    apply_file_blocks(text, project)

    script = "\n".join(
        [
            "set -e",
            *start,
            # the doc's reader waits for the servers; the script polls for them
            f"for port in {' '.join(ports)}; do for _ in $(seq 300); do "
            "curl -s -o /dev/null http://127.0.0.1:$port/count/ && break; sleep 0.1; done; done",
            f"echo '{CHECK_MARK}'",
            *check,
        ]
    )
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = shell.communicate(timeout=240)  # migrate, collectstatic, 4 processes
        assert shell.returncode == 0, output + logs(project)
        # The check block: each web process's static file, then the terminal's action.
        checked = output.split(f"{CHECK_MARK}\n", 1)[1]
        assert checked.splitlines()[:2] == ["200", "200"], output + logs(project)
        assert '"counted": 10' in checked, output + logs(project)
        assert (project / "staticfiles" / "async_actions" / "progress.js").exists()
        for port in ports:  # WhiteNoise, DEBUG off: both files from both processes
            assert_static_served(f"http://127.0.0.1:{port}")
        action_id = watch_on_both(*ports)
        status, attempt, task_id = psql(
            database, f"SELECT status, attempt, task_id FROM async_actions_action "
            f"WHERE id = '{action_id}'"
        ).split("|")  # fmt: skip
        assert (status, attempt) == ("succeeded", "1")
        assert task_id, "no task carried the action: a web process ran it"
        # A worker process took the action's task: its row names the worker, and the
        # worker's log (not a web process's) shows it.
        task = psql(
            database,
            "SELECT status, worker_ids FROM django_tasks_database_dbtaskresult "
            f"WHERE id = '{task_id}'",
        )
        assert task.startswith('SUCCESSFUL|["'), task
        # The worker id on the task's row is one a worker process announced as it started
        # ("Starting worker worker_id=..."; per-task lines differ between Django 5.2's
        # backport and Django 6): a worker, not a web process, ran it.
        worker_id = json.loads(task.split("|", 1)[1])[-1]
        workers = [(project / "run" / f"worker-{n}.log").read_text() for n in (1, 2)]
        assert any(f"worker_id={worker_id}" in log for log in workers), logs(project)
        for n in (1, 2):
            assert worker_id not in (project / "run" / f"web-{n}.log").read_text()
    finally:
        stop_session(shell.pid)
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
             f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'],
            check=False, capture_output=True,
        )  # fmt: skip
    assert "Traceback" not in logs(project), logs(project)


def watch_on_both(port_1: str, port_2: str) -> str:
    """Start the count on web process 1, watch its processing page there and on web
    process 2 until both show the result; the action's id."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        seen_1: list[str] = []
        seen_2: list[str] = []
        first = new_page(browser.new_context(), seen_1)
        first.goto(f"http://127.0.0.1:{port_1}/count/")
        first.get_by_role("button", name="Start").click()
        first.wait_for_url(re.compile(r"/count/processing/"))
        processing = first.url
        action_id = re.search(r"/processing/([0-9a-f-]{36})/", processing)
        assert action_id, processing
        # The same tab's cookies (the action belongs to its session), the other process.
        second = new_page(first.context, seen_2)
        second.goto(processing.replace(f":{port_1}/", f":{port_2}/"))
        assert "Count to ten" in second.title(), second.title()
        for page in (first, second):
            page.wait_for_url(re.compile(r"/count/result/"), timeout=60_000)
            assert "Done" in page.inner_text("body")
        assert f":{port_2}/" in second.url
        browser.close()
    # Both pages moved live: web process 2 forwarded the worker's progress too.
    for seen in (seen_1, seen_2):
        assert any(message.startswith("Counted to") for message in seen), seen
    return action_id[1]


def new_page(context: BrowserContext, seen: list[str]) -> Page:
    """A page that records the progress messages it shows (the ``aa:update`` events)."""
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.expose_function("aaSeen", lambda message: seen.append(message))
    page.add_init_script(
        'document.addEventListener("aa:update", e => window.aaSeen(e.detail.message));'
    )
    return page


def logs(project: Path) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(project.glob("run/*.log"))
    )
