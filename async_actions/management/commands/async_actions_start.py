"""``manage.py async_actions_start HANDLER --json '{...}'``: start an action and exit at once.

For cron lines and systemd timers: it prints the new action's id and returns without
waiting; the server (or a worker) runs the action. ``--run-after`` delays it;
``--idempotency-key`` takes a template filled with the current time (strftime codes),
so two runs of one tick start one action. Exit codes are those of
``async_actions_run``: 0 started (or already started), 2 bad usage, 4 not started.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from async_actions.management import starting
from async_actions.management.starting import EXIT_NOT_STARTED, EXIT_USAGE
from async_actions.models import Action
from async_actions.schedule import parse_run_after


class Command(BaseCommand):
    help = (
        "Start an action, print its id and exit without waiting (for cron and systemd "
        "timers). Exit code: 0 started (or already started with this idempotency key), "
        "2 bad usage, 4 could not start."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        starting.add_start_arguments(parser, request_option="--json")
        parser.add_argument(
            "--run-after",
            help="Do not start before this time: ISO 8601 (2030-01-31T06:00:00+01:00; "
            "without an offset, TIME_ZONE) or a duration from now (90s, 10m, 1h30m, 2d)",
        )
        parser.add_argument(
            "--idempotency-key",
            help="A key made from this template with the current time's strftime codes "
            "(TIME_ZONE), e.g. 'nightly-report-%%Y-%%m-%%d'; if an action with the key "
            "exists, its id is printed and nothing starts",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        request = starting.read_request(options["request"], "--json")
        run_after = self._run_after(options["run_after"])
        key = self._key(options["idempotency_key"])
        user = starting.read_user(options["user"])
        existing = self._existing(options["handler"], key, user)
        if existing is not None:
            self.stderr.write(f"Already started with idempotency key {key!r}.")
            self.stdout.write(str(existing.pk))
            return
        result = starting.start(
            options["handler"], request, user=user, idempotency_key=key, run_after=run_after
        )
        assert result.action is not None  # starting.start() answers only a started action
        if not result.created:
            self.stderr.write(f"Already started with idempotency key {key!r}.")
        self.stdout.write(str(result.action.pk))

    def _run_after(self, text: str | None) -> Any:
        if text is None:
            return None
        try:
            return parse_run_after(text)
        except ValueError as exc:
            raise CommandError(f"--run-after: {exc}", returncode=EXIT_USAGE) from None

    def _key(self, template: str | None) -> str | None:
        """The template with the current time (``TIME_ZONE``) filled in."""
        if not template:
            return None
        now = timezone.now()  # naive, already in TIME_ZONE, when USE_TZ is off
        key = (timezone.localtime(now) if timezone.is_aware(now) else now).strftime(template)
        if len(key) > 255:
            raise CommandError(
                "--idempotency-key: the key is over 255 characters.", returncode=EXIT_USAGE
            )
        return key

    def _existing(self, handler: str, key: str | None, user: Any) -> Action | None:
        """An action this command started with the key before, finished or not.

        The service answers a repeated key only while its action is unfinished; a cron
        tick run twice must not start twice even when the first run already ended.
        """
        if not key:
            return None
        owned = (
            Action.objects.filter(user=user)
            if user is not None
            else Action.objects.filter(user__isnull=True, session_key="")
        )
        try:
            found = owned.filter(handler=handler, idempotency_key=key)
            return found.order_by("-created_at").first()
        except DatabaseError as exc:
            raise CommandError(
                f"The database is unavailable: {exc}", returncode=EXIT_NOT_STARTED
            ) from None
