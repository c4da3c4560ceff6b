"""What starts the machinery: ``async_actions.startup()`` in servers and workers, and
nothing in commands that neither serve nor work (``check``, ``migrate``, ...)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.servers import ROOT, manage, sqlite_env, stop

#: Runs Django in a fresh process, does ``STEP``, and prints what the process then has.
PROBE = """
import atexit, json, signal, threading
import django
django.setup()
ours = []  # atexit callbacks of this package (libraries register their own at import)
register = atexit.register
def spy(func, *args, **kwargs):
    if getattr(func, "__module__", "").startswith("async_actions"):
        ours.append(func.__qualname__)
    return register(func, *args, **kwargs)
atexit.register = spy
{step}
from async_actions import recovery, runners
print("PROBE " + json.dumps({{
    "threads": sorted(t.name for t in threading.enumerate()),
    "sigterm": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
    "atexit": ours,
    "sweeper": recovery._periodic is not None,
}}))
"""


def probe(env: dict, step: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(step=step)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")][-1]
    return json.loads(line.removeprefix("PROBE "))


#: A command run as ``manage.py`` runs it (system checks included).
COMMAND = (
    "from django.core.management import execute_from_command_line as run; "
    "run(['manage.py', {args}])"
)
NOTHING_STARTED = {"threads": ["MainThread"], "sigterm": True, "atexit": [], "sweeper": False}


@pytest.mark.slow
@pytest.mark.parametrize(
    "step",
    [
        COMMAND.format(args="'check'"),
        COMMAND.format(args="'migrate', '--noinput', '-v0'"),
        COMMAND.format(args="'showmigrations'"),
        "from async_actions.runners import get_runner; get_runner()",
        "from async_actions.runners.tasks import TasksRunner; TasksRunner()",
    ],
    ids=["check", "migrate", "showmigrations", "get_runner", "tasks_runner"],
)
def test_commands_and_runner_construction_start_no_thread_and_no_signal_handler(
    tmp_path: Path, step: str
) -> None:
    env = sqlite_env(tmp_path, "tests.settings")
    manage(env, "migrate", "--noinput", "-v0")
    assert probe(env, step) == NOTHING_STARTED


@pytest.mark.slow
def test_importing_the_asgi_application_starts_recovery_and_the_shutdown_hooks(
    tmp_path: Path,
) -> None:
    env = sqlite_env(tmp_path, "tests.settings")
    manage(env, "migrate", "--noinput", "-v0")
    seen = probe(env, "import example_project.asgi")
    assert "async-actions-sweeper" in seen["threads"]
    assert seen["sweeper"] is True
    assert seen["sigterm"] is False  # the ThreadRunner turns SIGTERM into a clean exit
    assert seen["atexit"] == ["ThreadRunner.shutdown"]


@pytest.mark.slow
def test_startup_twice_starts_once(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path, "tests.settings")
    manage(env, "migrate", "--noinput", "-v0")
    seen = probe(env, "import async_actions; async_actions.startup(); async_actions.startup()")
    assert seen["threads"].count("async-actions-sweeper") == 1
    assert seen["atexit"] == ["ThreadRunner.shutdown"]


STALE_ROW = """
from datetime import timedelta
from django.utils import timezone
from async_actions.models import Action
long_ago = timezone.now() - timedelta(minutes=5)
Action.objects.create(handler="tests.echo", status="running", started_at=long_ago,
                      heartbeat_at=long_ago, attempt=1)
"""


@pytest.mark.slow
def test_the_worker_command_sweeps_before_any_task(tmp_path: Path) -> None:
    """SWEEP_INTERVAL is an hour in the test settings: only a start-up sweep can do it."""
    env = sqlite_env(tmp_path, "tests.settings")
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "shell", "-c", STALE_ROW)
    db = env["AA_SQLITE_PATH"]

    def status() -> str:
        with sqlite3.connect(db, timeout=20) as conn:
            return conn.execute("SELECT status FROM async_actions_action").fetchone()[0]

    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "async_actions_worker", "--no-reload",
             "--no-startup-delay", "--interval", "0.1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: status() == "failed", timeout=30)
        finally:
            stop(worker)
