"""``manage.py async_actions_purge``: delete finished actions whose retention ended."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from async_actions import retention

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match:
        raise CommandError(
            f"--older-than {text!r} is not an age; use a number and a unit: 45s, 90m, "
            "12h, 30d or 2w."
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = (
        "Delete finished actions whose expires_at (RETENTION) has passed, or, with "
        "--older-than, that finished longer ago than that. Unfinished actions are never "
        "deleted. Deletes in batches so a large table is never locked for long."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            metavar="AGE",
            help="Instead of expires_at: actions that finished more than AGE ago (e.g. 30d).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print what would go; delete nothing."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=retention.DEFAULT_BATCH_SIZE,
            help="Rows per DELETE (default %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        if options["older_than"]:
            age = parse_age(options["older_than"])
            queryset = retention.finished_before(timezone.now() - age)
            what = f"finished more than {options['older_than']} ago"
        else:
            queryset = retention.expired()
            what = "past their retention"
        rows = retention.summary(queryset)
        total = sum(count for _handler, _status, count in rows)
        for handler, status, count in rows:
            self.stdout.write(f"  {count:>8}  {status:<10} {handler}")
        if options["dry_run"]:
            self.stdout.write(f"{total} finished actions {what} would be deleted (dry run).")
            return
        deleted = 0
        for batch in retention.purge(queryset, batch_size=options["batch_size"]):
            deleted += batch
            if options["verbosity"] >= 2:
                self.stdout.write(f"  deleted {batch} (total {deleted})")
        self.stdout.write(self.style.SUCCESS(f"Deleted {deleted} finished actions {what}."))
