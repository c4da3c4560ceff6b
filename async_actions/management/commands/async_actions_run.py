"""``manage.py async_actions_run <handler> --request '<json>'``: run an action from a terminal.

Shows a live progress bar until the action ends; Ctrl-C asks the action to cancel (a
second Ctrl-C leaves at once). The exit code tells the outcome, for scripts and cron.
What the command reports goes to stdout; stderr carries only errors (Django paints it red).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import time
from typing import Any
from uuid import UUID, uuid4

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, close_old_connections

from async_actions import service
from async_actions.management import starting
from async_actions.management.starting import (  # the exit codes, named here too
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_STARTED,
    EXIT_SUCCEEDED,
    EXIT_USAGE,
)
from async_actions.models import Action
from async_actions.runners import get_runner
from async_actions.runners.thread import ThreadRunner
from async_actions.supervisor import supervisor

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_STARTED",
    "EXIT_SUCCEEDED",
    "EXIT_USAGE",
    "Command",
    "ProgressLine",
]

#: Seconds an action may stay pending on a worker runner before the command says that no
#: worker took it: without a running worker the bar would sit at "pending" in silence.
PENDING_HINT_AFTER = 10.0

#: Bounds on the bar's width in cells; it takes what the terminal line leaves.
MIN_CELLS = 10
MAX_CELLS = 40


class Command(BaseCommand):
    help = (
        "Start an action and follow it with a live progress bar. Exit code: 0 succeeded, "
        "1 failed, 2 bad usage, 3 cancelled, 4 not started (unknown handler, or refused), "
        "130 left with a second Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        starting.add_start_arguments(parser, request_option="--request")
        parser.add_argument(
            "--idempotency-key", help="Return the running action with this key, if any"
        )
        parser.add_argument(
            "--detach", action="store_true", help="Print the action id and exit at once"
        )
        parser.add_argument(
            "--interval", type=float, default=0.2, help="Seconds between screen updates"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        request = starting.read_request(options["request"], "--request")
        user = starting.read_user(options["user"])
        if options["detach"]:  # the server (or a worker) runs it; see async_actions_start
            action = self._start(options, request, user, uuid4())
            self.stdout.write(str(action.pk))
            return
        # The filter is in place before the start: on a thread runner the action may
        # run, and fail, as soon as the start commits.
        with _TracebackOnce(uuid4()) as once:
            action = self._start(options, request, user, once.action_id)
            once.action_id = action.pk  # another action, for a repeated idempotency key
            runner = get_runner()
            if isinstance(runner, ThreadRunner):
                # This process is no server: run the action here, in the foreground, as a
                # server would (a server that picked it up first runs it; the claim decides).
                runner.run_here(action.pk)
            self.stdout.write(f"Action {action.pk} ({action.handler})")
            final = self._follow(action, options["interval"], hint=not runner.runs_in_process)
        self._exit(final)

    def _start(self, options: dict[str, Any], request: Any, user: Any, pk: UUID) -> Action:
        result = starting.start(
            options["handler"],
            request,
            user=user,
            idempotency_key=options["idempotency_key"],
            action_id=pk,
        )
        assert result.action is not None  # starting.start() answers only a started action
        return result.action

    def _follow(self, action: Action, interval: float, *, hint: bool) -> Action:
        """Show the action's state until it ends. With ``hint`` (a runner whose workers
        are other processes), an action still pending after ``PENDING_HINT_AFTER``
        seconds, and not delayed on purpose, gets one line saying no worker took it."""
        interrupts = 0
        since = time.monotonic()

        def on_interrupt(signum: int, frame: Any) -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                self.stdout.write("\nCancelling… (Ctrl-C again to leave without waiting)")
                service.cancel(action.pk)
            else:
                self.stderr.write(f"\nLeft action {action.pk} without waiting.")
                sys.exit(EXIT_INTERRUPTED)

        previous = signal.signal(signal.SIGINT, on_interrupt)
        bar = ProgressLine(self.stdout, tty=self.stdout.isatty())
        try:
            while True:
                state = self._state(action)
                if state is not None:
                    bar.show(state)
                    if state["status"] in Action.TERMINAL_STATUSES:
                        break
                    if (
                        hint
                        and state["status"] == Action.Status.PENDING
                        and action.run_after is None
                        and time.monotonic() - since >= PENDING_HINT_AFTER
                    ):
                        hint = False
                        bar.note(
                            f"No worker has taken the action after {PENDING_HINT_AFTER:g} s. "
                            "Is a worker running (manage.py async_actions_worker, or "
                            "celery worker for the CeleryRunner) on this database and queue?"
                        )
                time.sleep(interval)
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()
        action.refresh_from_db()
        return action

    def _state(self, action: Action) -> dict[str, Any] | None:
        ctx = supervisor.local(action.pk)
        if ctx is not None:  # running here: read memory, fresher than the database
            return ctx._publisher.snapshot()
        try:
            action.refresh_from_db()
        except DatabaseError:
            close_old_connections()
            return None
        return action.snapshot()

    def _exit(self, action: Action) -> None:
        if action.status == Action.Status.SUCCEEDED:
            self.stdout.write(json.dumps(action.response, indent=2))
            return
        if action.status == Action.Status.CANCELLED:
            self.stdout.write("Cancelled.")
            sys.exit(EXIT_CANCELLED)
        self.stderr.write(f"Failed: {action.error}")
        if action.traceback:
            self.stderr.write(action.traceback)
        sys.exit(EXIT_FAILED)


class _TracebackOnce:
    """While the command follows an action running in this process, the executor's log
    record of its failure keeps its line but loses its traceback: the command prints
    the stored traceback once, at the end, instead of twice."""

    def __init__(self, action_id: UUID) -> None:
        self.action_id = action_id
        self.logger = logging.getLogger("async_actions")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and self.action_id in (record.args or ()):
            record.exc_info = None
            record.exc_text = None
        return True

    def __enter__(self) -> _TracebackOnce:
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeFilter(self)


class ProgressLine:
    """One redrawn line on a terminal; a line per visible change elsewhere (logs, CI)."""

    def __init__(self, out: Any, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.started = time.monotonic()
        self.last: tuple[int, str, str] | None = None

    def show(self, state: dict[str, Any]) -> None:
        percent = float(state.get("percent") or 0.0)
        key = (int(percent), state.get("message") or "", state["status"])
        if not self.tty and key == self.last:
            return
        self.last = key
        line = self.render(percent, key[1], key[2])
        if self.tty:
            self.out.write("\r\x1b[2K" + line, ending="")
            self.out.flush()
        else:
            self.out.write(line)

    def note(self, text: str) -> None:
        """A line of its own under the bar; the bar is drawn again below it."""
        if self.tty:
            self.out.write("")  # end the bar's line
        self.out.write(text)
        self.last = None

    def render(self, percent: float, message: str, status: str) -> str:
        width = shutil.get_terminal_size((80, 20)).columns
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < percent < 100 and status == Action.Status.RUNNING:
            eta = f" ETA {_clock(elapsed * (100 - percent) / percent)}"
        tail = f" {percent:5.1f}% {_clock(elapsed)}{eta} {status}"
        if message:
            tail += f" {message}"
        # The bar takes the room the text leaves on the line (one column is kept free so
        # the cursor never wraps), between MIN_CELLS and MAX_CELLS.
        cells = max(MIN_CELLS, min(MAX_CELLS, width - 1 - len(tail) - 2))
        filled = int(cells * percent / 100)
        text = "[" + "#" * filled + "." * (cells - filled) + "]" + tail
        return text[: width - 1] if self.tty else text

    def close(self) -> None:
        if self.tty and self.last is not None:
            self.out.write("")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
