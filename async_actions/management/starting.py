"""Starting an action from a management command: what ``async_actions_run`` and
``async_actions_start`` share, so both read their arguments and answer with the same exit
codes (docs/basics.md lists them).

Each helper turns bad input into a ``CommandError`` with the right exit code, so a
command's ``handle()`` reads as the steps it takes.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser

from async_actions import service
from async_actions.payloads import PayloadError, loads

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_NOT_STARTED = 4
EXIT_INTERRUPTED = 130


def add_start_arguments(parser: CommandParser, *, request_option: str) -> None:
    """The handler name, the request (as JSON, under ``request_option``) and ``--user``;
    the request lands in ``options["request"]`` whatever the option is called."""
    parser.add_argument("handler", help="Handler name, e.g. reports.build")
    parser.add_argument(
        request_option,
        dest="request",
        default="{}",
        help="The action's request as JSON (default {})",
    )
    parser.add_argument("--user", help="Username that owns the action")


def read_request(text: str, option: str) -> Any:
    """The request from its JSON text; exit 2 on text that is not JSON or nests too deep."""
    try:
        return loads(text, option)
    except PayloadError as exc:  # not JSON, or nested deeper than MAX_JSON_DEPTH
        raise CommandError(str(exc), returncode=EXIT_USAGE) from None


def read_user(username: str | None) -> Any:
    """The user named by ``--user`` (None without it); exit 2 for an unknown name."""
    if not username:
        return None
    User = get_user_model()
    try:
        return User.objects.get(**{User.USERNAME_FIELD: username})
    except User.DoesNotExist:
        raise CommandError(f"No user {username!r}.", returncode=EXIT_USAGE) from None


def start(handler: str, request: Any, **options: Any) -> service.StartResult:
    """``service.start``, with a refusal as a ``CommandError``: exit 2 for an argument the
    service rejects, 4 for an unknown handler or an action that could not start."""
    try:
        result = service.start(handler, request, **options)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc), returncode=EXIT_USAGE) from None
    if result.status is service.OpStatus.NO_HANDLER:
        raise CommandError(f"No handler named {handler!r}.", returncode=EXIT_NOT_STARTED)
    if not result.ok or result.action is None:
        raise CommandError(
            f"The action could not start: {result.status.name}.", returncode=EXIT_NOT_STARTED
        )
    return result
