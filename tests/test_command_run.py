"""``manage.py async_actions_run``: a live bar in the terminal, exit code = outcome."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from async_actions.management.commands import async_actions_run
from async_actions.models import Action
from tests.helpers import wait_for

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
    assert f"Action {action.pk} (tests.progress)" in out.getvalue()
    assert err.getvalue() == ""  # Django paints stderr red: nothing there on success


def test_failed_action_exits_one_with_the_error(runner):
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("async_actions_run", "tests.user_error", stdout=io.StringIO(), stderr=err)
    assert exited.value.code == 1
    assert "Row 3 is not a number" in err.getvalue()


def test_unknown_handler_exits_four_not_started(runner):
    with pytest.raises(CommandError, match="No handler named 'nope'") as raised:
        call_command("async_actions_run", "nope")
    assert raised.value.returncode == 4
    assert not Action.objects.exists()


def test_refused_start_exits_four_not_started(runner, temporary_handler):
    @temporary_handler("tests.run_refuse", concurrency_key="run-refuse", on_busy="refuse")
    def refuse(ctx):
        return None

    holder = Action.objects.create(
        handler="tests.run_refuse", status="running", concurrency_key="run-refuse"
    )
    with pytest.raises(CommandError, match="could not start: BUSY") as raised:
        call_command("async_actions_run", "tests.run_refuse", stdout=io.StringIO())
    assert raised.value.returncode == 4
    assert list(Action.objects.all()) == [holder]


def test_unknown_user_is_a_usage_error(runner):
    with pytest.raises(CommandError, match="No user 'ghost'") as raised:
        call_command("async_actions_run", "tests.echo", user="ghost")
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
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "Cancelled." in out
    assert "Cancelled." not in err  # an outcome the user asked for is no error
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("select status from async_actions_action").fetchall() == [
            ("cancelled",)
        ]


def _test_env(tmp_path):
    """A subprocess environment on the test settings (tests' handlers) and its own SQLite
    file, migrated."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "AA_SQLITE_PATH": str(tmp_path / "run.sqlite3"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("COLUMNS", None)
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, check=True, cwd=ROOT
    )
    return env


def test_failure_prints_its_traceback_once_on_stderr(tmp_path):
    env = _test_env(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "async_actions_run", "tests.boom"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("Traceback (most recent call last)") == 1, done.stderr
    assert done.stderr.count("RuntimeError: secret path") == 1, done.stderr
    assert "failed because of an unexpected error" in done.stderr
    header = done.stdout.splitlines()[0]  # the header is output, not an error
    assert header.startswith("Action ") and header.endswith("(tests.boom)")
    assert header not in done.stderr.splitlines()


def test_an_action_failing_before_the_command_follows_it_logs_no_second_traceback(
    runner, monkeypatch, caplog
):
    """The action may fail on the runner's thread before the command has printed a
    line (a loaded machine): the log record of that failure loses its traceback too,
    since the command prints the stored one. Each run here waits for the end first."""
    run_here = runner.run_here

    def run_to_the_end(action_id):
        run_here(action_id)
        wait_for(lambda: Action.objects.filter(pk=action_id, finished_at__isnull=False).exists())

    monkeypatch.setattr(runner, "run_here", run_to_the_end)
    err = io.StringIO()
    with caplog.at_level("ERROR", logger="async_actions"), pytest.raises(SystemExit):
        call_command("async_actions_run", "tests.boom", stdout=io.StringIO(), stderr=err)
    action = Action.objects.get()
    failures = [r for r in caplog.records if r.args and action.pk in r.args]
    assert failures, "the executor logs the failure"
    assert [r.exc_info for r in failures] == [None] * len(failures)
    assert err.getvalue().count("Traceback (most recent call last)") == 1


def test_second_ctrl_c_leaves_at_once_with_130(tmp_path):
    env = _test_env(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "async_actions_run",
            "tests.stubborn",  # ignores the cancel: only the second Ctrl-C ends the command
            "--request",
            '{"gate": "never"}',
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the header, then the first line of the bar
        if "running" in line:
            break
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        if "Cancelling" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "without waiting" in err


def test_documented_exit_codes_are_the_commands():
    from async_actions.management.commands import async_actions_run as command

    text = (ROOT / "docs" / "basics.md").read_text()
    table = text.split("| exit code | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = {int(row.split("|")[1]) for row in table.splitlines()[2:] if row.strip()}
    defined = {value for name, value in vars(command).items() if name.startswith("EXIT_")}
    assert documented == defined == {0, 1, 2, 3, 4, 130}
    # Each one is produced above: 0, 1, 2 (JSON, user), 3 (Ctrl-C), 4 (unknown, refused),
    # 130 (second Ctrl-C).


def test_bar_leaves_room_for_the_message_at_80_columns(monkeypatch):
    from async_actions.management.commands.async_actions_run import MIN_CELLS, ProgressLine

    monkeypatch.setenv("COLUMNS", "80")
    line = ProgressLine(io.StringIO(), tty=True)
    message = "Importing row 41 of 97"  # cut at column 79 by the old 30-cell bar
    text = line.render(41.0, message, "running")
    assert text.endswith(message)
    assert len(text) <= 79
    bar = text[: text.index("]") + 1]
    assert MIN_CELLS + 2 <= len(bar) < 40


def test_bar_grows_with_a_wide_terminal(monkeypatch):
    from async_actions.management.commands.async_actions_run import MAX_CELLS, ProgressLine

    monkeypatch.setenv("COLUMNS", "200")
    text = ProgressLine(io.StringIO(), tty=True).render(50.0, "half", "running")
    assert text.index("]") + 1 == MAX_CELLS + 2
    assert text.count("#") == MAX_CELLS // 2


def test_bar_in_a_real_terminal_shows_the_whole_message(tmp_path):
    """The command on a pseudo-terminal of 80 columns: the message is not cut."""
    import pty

    env = {**_test_env(tmp_path), "COLUMNS": "80", "LINES": "24"}
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "async_actions_run",
            "tests.progress",
            "--request",
            '{"steps": 3, "label": "Importing the customers, step"}',
        ],
        env=env,
        cwd=ROOT,
        stdout=secondary,
        stderr=subprocess.PIPE,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closes with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=30)
    os.close(primary)
    screen = b"".join(chunks).decode()
    assert proc.returncode == 0, screen
    # Each redraw is "\r" + erase-line + the line; the last one ends the bar.
    redraws = [part.split("\n")[0] for part in screen.split("\r\x1b[2K")[1:]]
    assert redraws, screen
    last = redraws[-1].rstrip()
    assert last.endswith("Importing the customers, step 3"), screen
    assert len(last) <= 79


def test_an_action_no_worker_takes_gets_one_line_saying_so(recording, monkeypatch):
    """A worker runner with no worker running: the bar would say "pending" forever."""
    monkeypatch.setattr(async_actions_run, "PENDING_HINT_AFTER", 0.0)
    out = io.StringIO()

    real_sleep, me, looks = time.sleep, threading.get_ident(), []

    def sleep(seconds: float) -> None:  # the command's clock: the user gives up at once
        if threading.get_ident() != me:  # other threads of the process keep real time
            real_sleep(seconds)
            return
        looks.append(seconds)
        if len(looks) == 3:
            Action.objects.update(status=Action.Status.CANCELLED)

    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.raises(SystemExit) as exited:
        call_command("async_actions_run", "tests.echo", stdout=out)
    assert exited.value.code == 3
    assert Action.objects.get().started_at is None  # queued for a worker, never run
    lines = out.getvalue().splitlines()
    hints = [line for line in lines if line.startswith("No worker has taken the action")]
    assert len(hints) == 1, lines
    assert "manage.py async_actions_worker" in hints[0]


def test_an_action_run_in_the_foreground_gets_no_worker_hint(runner, monkeypatch):
    monkeypatch.setattr(async_actions_run, "PENDING_HINT_AFTER", 0.0)
    out = io.StringIO()
    call_command("async_actions_run", "tests.progress", request='{"steps": 5}', stdout=out)
    assert "No worker" not in out.getvalue()
