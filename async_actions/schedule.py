"""When an action may start: the ``run_after`` a caller gives, made into one stored time.

``Action.run_after`` means one thing everywhere: the action is not claimed before this
time. A delayed start sets it, a retry's backoff sets it, every runner honours it
(the claim checks it; a too-early delivery is dispatched again for then). Callers hand
a start a ``datetime`` or a ``timedelta`` (the command line and the API hand text); this
module turns each into a ``datetime`` of the kind the site stores (aware, or naive in
``TIME_ZONE`` when ``USE_TZ`` is off), or None for "now". It imports nothing of the
package.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

__all__ = ["parse_run_after", "run_after_from"]

#: ``90s``, ``10m``, ``2h``, ``1d`` (and combinations: ``1h30m``) on the command line.
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def run_after_from(value: datetime | timedelta | None) -> datetime | None:
    """The stored ``run_after`` for a start: None (due now) or a future datetime.

    A ``timedelta`` counts from now; a time already past means now; a negative
    ``timedelta`` is past, so now. With ``USE_TZ`` on, a naive ``datetime`` is refused
    (which zone it meant is a guess). With it off, the site's times are naive in
    ``TIME_ZONE`` (``timezone.now()`` is naive), so a naive one is taken as such and an
    aware one is converted to it: comparing or storing a mix would fail.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = timezone.now() + value
    elif isinstance(value, datetime):
        if not settings.USE_TZ:
            if timezone.is_aware(value):
                value = timezone.make_naive(value, timezone.get_default_timezone())
        elif timezone.is_naive(value):
            raise ValueError(
                "run_after must be an aware datetime (e.g. timezone.now() + timedelta(...)) "
                "or a timedelta, not a naive datetime."
            )
    else:
        raise TypeError(f"run_after must be a datetime or a timedelta, not {type(value).__name__}.")
    return value if value > timezone.now() else None


def parse_run_after(text: str) -> datetime | None:
    """``--run-after`` text: an ISO 8601 time or a duration from now (``90s``, ``1h30m``).

    An ISO time without an offset is in the current time zone (``TIME_ZONE``). Raises
    ValueError with a readable message for anything else.
    """
    text = text.strip()
    match = _DURATION.match(text) if text else None
    if match is not None and any(match.groups()):
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return run_after_from(timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds))
    try:
        parsed = parse_datetime(text)
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2030-01-31T06:00:00+01:00) "
            "nor a duration (90s, 10m, 1h30m, 2d)."
        )
    if timezone.is_naive(parsed) and settings.USE_TZ:
        parsed = timezone.make_aware(parsed)
    return run_after_from(parsed)
