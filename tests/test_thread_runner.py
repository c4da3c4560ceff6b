"""The thread runner: a bounded pool, heartbeats, and shutdown that leaves nothing running.

The SIGTERM tests run a real process (``manage.py shell`` with the thread runner), start
actions in it, signal it and read the database it leaves behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from async_actions import service
from async_actions.models import Action
from async_actions.runners.thread import SHUTDOWN_ERROR
from async_actions.service import OpStatus
from tests.actions import gate
from tests.helpers import wait_for
from tests.servers import ROOT, manage, sqlite_env

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_pool_never_runs_more_than_max_workers(settings: Any, runner: Any) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_WORKERS": 2}
    from async_actions import runners

    pool = runners.get_runner()
    ids = [
        service.start("tests.wait", {"gate": f"pool-{i}"}, session_key="s").action.pk
        for i in range(5)
    ]
    wait_for(lambda: Action.objects.filter(status="running").count() == 2)
    time.sleep(0.3)  # given time, a third would have started by now
    assert Action.objects.filter(status="running").count() == 2
    assert Action.objects.filter(status="pending").count() == 3
    for i in range(5):
        gate(f"pool-{i}").set()
    for pk in ids:
        wait_for(lambda pk=pk: Action.objects.filter(pk=pk, status="succeeded").exists())
    assert len(pool._threads) <= 2


def test_running_actions_get_heartbeats(runner: Any) -> None:
    pk = service.start("tests.wait", {"gate": "heartbeat"}, session_key="s").action.pk
    first = wait_for(
        lambda: (
            Action.objects.filter(pk=pk, status="running")
            .values_list("heartbeat_at", flat=True)
            .first()
        )
    )
    # HEARTBEAT_INTERVAL is 0.5 s in the test settings.
    later = wait_for(
        lambda: (value := Action.objects.get(pk=pk).heartbeat_at) > first and value, timeout=5
    )
    assert later > first
    gate("heartbeat").set()


def test_shutdown_cancels_what_outlives_the_timeout_and_refuses_new_starts(
    settings: Any, runner: Any
) -> None:
    settings.ASYNC_ACTIONS = {
        **settings.ASYNC_ACTIONS,
        "SHUTDOWN_TIMEOUT": 0.2,
        "SHUTDOWN_GRACE": 2.0,
    }
    from async_actions import runners

    pool = runners.get_runner()
    cooperative = service.start("tests.wait", {"gate": "never"}, session_key="s").action.pk
    stubborn = service.start("tests.stubborn", {"gate": "stubborn-sd"}, session_key="s").action.pk
    wait_for(lambda: Action.objects.filter(status="running").count() == 2)
    pool.shutdown()
    assert service.start("tests.echo", session_key="s").status is OpStatus.SHUTDOWN_IN_PROGRESS
    assert Action.objects.get(pk=cooperative).status == "cancelled"
    failed = Action.objects.get(pk=stubborn)
    assert (failed.status, failed.error) == ("failed", SHUTDOWN_ERROR)
    assert not Action.objects.filter(status="running").exists()
    gate("stubborn-sd").set()


SCRIPT = """
import time
from async_actions import service
from async_actions.models import Action
ids = [service.start("tests.wait", {"gate": f"term-{i}"}, session_key="s").action.pk
       for i in range(3)]
ids.append(service.start("tests.stubborn", {"gate": "term-stubborn"}, session_key="s").action.pk)
while Action.objects.filter(status="running").count() < 4:
    time.sleep(0.02)
print("RUNNING", flush=True)
time.sleep(60)
"""


def test_sigterm_ends_the_process_with_nothing_left_running(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path, "tests.settings")
    manage(env, "migrate", "--noinput", "-v0")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", SCRIPT],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen = []
        while not seen or seen[-1] not in ("RUNNING\n", ""):  # "" is the end of output
            seen.append(process.stdout.readline())  # the shell may print a banner first
        assert seen[-1] == "RUNNING\n", "".join(seen) + process.stderr.read()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    out = manage(
        env,
        "shell",
        "-c",
        "import json; from async_actions.models import Action;"
        "print(json.dumps(list(Action.objects.values_list('handler', 'status', 'error'))))",
    )
    rows = [tuple(row) for row in json.loads(out.strip().splitlines()[-1])]
    assert sorted(status for _h, status, _e in rows) == [
        "cancelled",
        "cancelled",
        "cancelled",
        "failed",
    ]
    assert ("tests.stubborn", "failed", SHUTDOWN_ERROR) in rows
