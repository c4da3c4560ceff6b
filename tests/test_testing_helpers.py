"""``async_actions.testing``: inline and captured runs, assertions on progress, cancel and
outcome, the pytest plugin and the ``TestCase`` mixin, used as a site's tests use them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.test import TestCase, TransactionTestCase

from async_actions import service
from async_actions.models import Action
from async_actions.runners import get_runner
from async_actions.runners.thread import ThreadRunner
from async_actions.testing import (
    ActionsTestMixin,
    CaptureRunner,
    InlineRunner,
    assert_cancelled,
    assert_failed,
    assert_progress_seen,
    assert_succeeded,
    capture_actions,
    progress_of,
    run_captured,
    run_inline,
    run_threaded,
    wait_finished,
)
from tests.actions import gate
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent

# -- pytest style ---------------------------------------------------------------------


@pytest.mark.django_db
def test_run_inline_inside_the_tests_transaction_ends_the_action_before_start_returns():
    with run_inline() as runner:
        result = service.start("tests.progress", {"steps": 5})
        # No commit happens in a `db` test: the action still ran, in this thread.
        state = assert_succeeded(result, response=5)
    assert state.percent == 100.0
    assert runner.started == [result.action.pk]
    assert isinstance(runner, InlineRunner)


@pytest.mark.django_db(transaction=True)
def test_run_inline_after_a_real_commit_runs_on_commit():
    with run_inline():
        result = service.start("tests.echo", {"x": 1})
        assert_succeeded(result, response={"echo": {"x": 1}})


@pytest.mark.django_db
def test_every_progress_report_is_recorded_in_order_however_fast():
    with run_inline():
        result = service.start("tests.progress", {"steps": 50})
        reports = progress_of(result)
        assert [r["message"] for r in reports] == [f"step {n}" for n in range(1, 51)]
        assert_progress_seen(result, percent=50.0, message="step 25", data={"step": 25})
        with pytest.raises(AssertionError, match="No progress report"):
            assert_progress_seen(result, message="step 51")


@pytest.mark.django_db
def test_a_failed_action_is_asserted_with_its_users_message():
    with run_inline():
        result = service.start("tests.user_error")
    assert_failed(result, error="Row 3 is not a number")
    with pytest.raises(AssertionError, match="is failed, not succeeded: Row 3 is not a number"):
        assert_succeeded(result)
    with pytest.raises(AssertionError, match="not 'other'"):
        assert_failed(result, error="other")


@pytest.mark.django_db
def test_cancel_when_stops_a_running_handler_at_a_report():
    gate("inline-cancel").clear()
    with run_inline(cancel_when=lambda report: report["percent"] >= 10):
        result = service.start("tests.wait", {"gate": "inline-cancel"})
    state = assert_cancelled(result)
    assert state.cancel_requested
    with pytest.raises(AssertionError, match="is cancelled, not failed"):
        assert_failed(result)


@pytest.mark.django_db
def test_captured_actions_stay_pending_until_run_captured():
    with capture_actions() as runner:
        first = service.start("tests.echo", {"n": 1})
        second = service.start("tests.echo", {"n": 2})
        dropped = service.start("tests.echo", {"n": 3})
        assert runner.started == [first.action.pk, second.action.pk, dropped.action.pk]
        assert set(Action.objects.values_list("status", flat=True)) == {"pending"}
        assert service.cancel(dropped.action) is service.OpStatus.OK
        states = run_captured()
    assert [s.status for s in states] == ["succeeded", "succeeded", "cancelled"]
    assert_succeeded(second, response={"echo": {"n": 2}})
    assert isinstance(runner, CaptureRunner)


@pytest.mark.django_db
def test_a_retried_action_runs_its_next_attempt_inline_without_waiting(temporary_handler):
    @temporary_handler(
        "tests.inline_flaky", max_attempts=3, retry_on=ConnectionError, retry_backoff=60
    )
    def flaky(ctx):
        if ctx.attempt < 3:
            raise ConnectionError("upstream down")
        return ctx.attempt

    with run_inline():
        result = service.start("tests.inline_flaky")
    state = assert_succeeded(result, response=3)
    assert state.attempt == 3


@pytest.mark.django_db
def test_an_async_handler_runs_inline_and_its_progress_is_recorded(temporary_handler):
    @temporary_handler("tests.inline_async")
    async def count(ctx):
        for n in range(1, 4):
            ctx.set_progress(n * 25, f"async {n}")
        return "done"

    with run_inline():
        result = service.start("tests.inline_async")
    assert_succeeded(result, response="done")
    assert [r["message"] for r in progress_of(result)] == ["async 1", "async 2", "async 3"]


@pytest.mark.django_db
def test_the_runner_is_restored_after_the_block():
    with run_inline():
        assert isinstance(get_runner(), InlineRunner)
    assert isinstance(get_runner(), ThreadRunner)


@pytest.mark.django_db
def test_progress_is_recorded_only_for_actions_the_testing_runners_ran():
    action = Action.objects.create(handler="tests.echo")
    with pytest.raises(AssertionError, match="was not started under run_inline"):
        progress_of(action)
    with run_inline():
        quiet = service.start("tests.echo")
    assert progress_of(quiet) == []  # kept after the block, where assertions are
    with pytest.raises(AssertionError, match="run_captured"), run_inline():
        run_captured()


@pytest.mark.django_db(transaction=True)
def test_wait_finished_waits_for_an_action_of_the_thread_runner(runner: Any):
    gate("helpers-wait").clear()
    result = service.start("tests.wait", {"gate": "helpers-wait"})
    with pytest.raises(AssertionError, match=r"still (pending|running) after 0\.2 s"):
        wait_finished(result, timeout=0.2)
    gate("helpers-wait").set()
    assert wait_finished(result).response == "released"


def test_the_pytest_plugin_gives_its_fixtures(tmp_path: Path):
    """A project's own pytest run with ``pytest_plugins = [...]`` in its conftest."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["async_actions.testing.pytest"]\n')
    (tmp_path / "test_site.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from async_actions import service
            from async_actions.testing import assert_progress_seen, assert_succeeded, wait_finished

            @pytest.mark.django_db
            def test_inline(actions_inline):
                result = service.start("tests.progress", {"steps": 4})
                assert_succeeded(result, response=4)
                assert_progress_seen(result, percent=75.0, message="step 3")
                assert actions_inline.started == [result.action.pk]

            @pytest.mark.django_db
            def test_captured(actions_captured):
                result = service.start("tests.echo")
                assert service.get(result.action).status == "pending"
                assert [s.status for s in actions_captured.run_captured()] == ["succeeded"]

            def test_threaded(actions_threaded):
                result = service.start("tests.echo", {"x": 1})
                assert wait_finished(result).response == {"echo": {"x": 1}}

            @pytest.mark.django_db(transaction=True)
            def test_without_a_server_the_thread_runner_leaves_it_pending():
                result = service.start("tests.echo")
                with pytest.raises(AssertionError, match="still pending"):
                    wait_finished(result, timeout=1)
            """
        )
    )
    # As a site's settings are: the test process is not the server (no startup()).
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "AA_RUN_WITHOUT_STARTUP": "0",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


@pytest.mark.django_db(transaction=True)
def test_run_threaded_runs_on_a_thread_of_its_own_and_cancels_what_outlives_the_block(
    settings: Any,
) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "RUN_WITHOUT_STARTUP": False}
    with run_threaded(shutdown_timeout=0.2) as runner:
        assert isinstance(runner, ThreadRunner)
        done = service.start("tests.echo", {"x": 2})
        assert wait_finished(done).response == {"echo": {"x": 2}}
        left = service.start("tests.wait", {"gate": "never-opened-threaded"})
        wait_for(lambda: service.get(left.action).status == "running")
    assert service.get(left.action).status == "cancelled"
    # Outside the block the site's own settings hold again: nothing runs here.
    after = service.start("tests.echo")
    with pytest.raises(AssertionError, match="still pending"):
        wait_finished(after, timeout=0.5)


# -- unittest style: Django's TestCase and TransactionTestCase ------------------------


class InlineInTestCase(ActionsTestMixin, TestCase):
    def test_an_action_runs_inline_inside_the_test_transaction(self) -> None:
        with self.run_actions_inline():
            result = service.start("tests.progress", {"steps": 3})
        self.assertActionSucceeded(result, response=3)
        self.assertProgressSeen(result, percent=100.0, message="step 3")

    def test_a_failure_and_a_cancel_are_asserted(self) -> None:
        gate("testcase-cancel").clear()
        with self.run_actions_inline(cancel_when=lambda report: report["message"] == "waiting"):
            failed = service.start("tests.boom")
            cancelled = service.start("tests.wait", {"gate": "testcase-cancel"})
        state = self.assertActionFailed(
            failed, error="The action failed because of an unexpected error."
        )
        self.assertEqual(state.response, None)
        self.assertActionCancelled(cancelled)
        with self.assertRaises(AssertionError):
            self.assertActionSucceeded(failed)

    def test_captured_actions_run_when_asked(self) -> None:
        runner = self.enterContext(self.capture_actions())
        result = service.start("tests.echo", {"a": 1})
        self.assertEqual(service.get(result.action).status, "pending")
        self.assertEqual(runner.started, [result.action.pk])
        runner.run_captured()
        self.assertActionSucceeded(result, response={"echo": {"a": 1}})


class InlineInTransactionTestCase(ActionsTestMixin, TransactionTestCase):
    def test_an_action_runs_inline_on_commit(self) -> None:
        with self.run_actions_inline():
            result = service.start("tests.progress", {"steps": 2})
        self.assertActionSucceeded(result, response=2)
        self.assertProgressSeen(result, percent=50.0)
