"""``manage.py async_actions_run``: a live bar in the terminal, exit code = outcome."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from async_actions.models import Action

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def test_succeeded_action_prints_response_and_exits_zero(runner):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "async_actions_run", "tests.progress", request='{"steps": 5}', stdout=out, stderr=err
    )
    action = Action.objects.get()
    assert action.status == "succeeded"
    assert "100.0%" in out.getvalue()
    assert out.getvalue().rstrip().endswith("5")
    assert str(action.pk) in err.getvalue()


def test_failed_action_exits_one_with_the_error(runner):
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("async_actions_run", "tests.user_error", stdout=io.StringIO(), stderr=err)
    assert exited.value.code == 1
    assert "Row 3 is not a number" in err.getvalue()


def test_unknown_handler_is_a_usage_error(runner):
    with pytest.raises(CommandError, match="No handler named 'nope'") as raised:
        call_command("async_actions_run", "nope")
    assert raised.value.returncode == 2
    assert not Action.objects.exists()


def test_invalid_json_request_is_a_usage_error(runner):
    with pytest.raises(CommandError, match="not valid JSON") as raised:
        call_command("async_actions_run", "tests.echo", request="{bad")
    assert raised.value.returncode == 2


def test_detach_prints_the_id_and_returns_at_once(runner):
    out = io.StringIO()
    call_command("async_actions_run", "tests.echo", request='{"a": 1}', detach=True, stdout=out)
    assert Action.objects.filter(pk=out.getvalue().strip()).exists()


def test_ctrl_c_cancels_the_action_and_exits_three(tmp_path):
    db = tmp_path / "run.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DEMO_SQLITE_PATH": str(db),
        "PYTHONPATH": str(ROOT),
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    proc = subprocess.Popen(
        [*manage, "async_actions_run", "demo.countdown", "--request", '{"seconds": 60}'],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the handler is really running
        if "seconds left" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "Cancelled" in err
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("select status from async_actions_action").fetchall() == [
            ("cancelled",)
        ]
