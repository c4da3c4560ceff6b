"""``manage.py async_actions_recover``: fail or requeue actions whose worker died.

Workers sweep on their own every ``SWEEP_INTERVAL``; run this from cron as well (or
after an outage) so recovery does not depend on any worker being alive.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from async_actions import recovery


class Command(BaseCommand):
    help = (
        "Mark running actions whose heartbeat is older than STALE_AFTER as failed "
        "(or requeue them when their handler allows more attempts), and dispatch "
        "pending actions whose dispatch was lost."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would change; change nothing."
        )

    def handle(self, *args: Any, dry_run: bool = False, **options: Any) -> None:
        report = recovery.sweep(dry_run=dry_run)
        verb = "would be" if dry_run else "were"
        for label, ids in (
            ("failed (worker lost)", report.failed),
            ("requeued for another attempt", report.requeued),
            ("dispatched again", report.redispatched),
        ):
            self.stdout.write(f"{len(ids)} actions {verb} {label}")
            for pk in ids:
                self.stdout.write(f"  {pk}")
