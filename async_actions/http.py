"""What each service outcome means over HTTP: one table for the views, the admin and the API.

The service answers expected outcomes with :class:`~async_actions.service.OpStatus`
values. Every HTTP surface turns them into a status code, a stable machine-readable
code (the API's JSON ``code``) and a readable message from :data:`OUTCOMES`, so a
refusal reads and counts the same wherever it happens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from django.http import FileResponse, Http404
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from async_actions.files import open_for_download
from async_actions.models import ActionFile
from async_actions.service import OpStatus

__all__ = [
    "FINISHED_MESSAGES",
    "OUTCOMES",
    "RETRY_AFTER",
    "HttpOutcome",
    "file_response",
    "finished_message",
    "outcome",
    "retry_headers",
]

#: Seconds a client is asked to wait after a 429 or 503 (``Retry-After``).
RETRY_AFTER = 5

#: Statuses that tell the client to come back later, so they carry ``Retry-After``.
RETRYABLE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class HttpOutcome:
    """An :class:`OpStatus` as HTTP: status code, JSON ``code`` and a readable message."""

    status: int
    code: str
    message: str | Promise

    @property
    def headers(self) -> dict[str, str]:
        """``Retry-After`` for the statuses a client should retry."""
        return retry_headers(self.status)


OUTCOMES: Mapping[OpStatus, HttpOutcome] = MappingProxyType(
    {
        OpStatus.OK: HttpOutcome(202, "ok", _("Done.")),
        OpStatus.NO_HANDLER: HttpOutcome(400, "no_handler", _("No handler accepts this request.")),
        OpStatus.SHUTDOWN_IN_PROGRESS: HttpOutcome(
            503, "shutdown", _("The server is restarting. Please try again in a moment.")
        ),
        OpStatus.DB_FAILED: HttpOutcome(
            503,
            "unavailable",
            _("The service is temporarily unavailable. Please try again in a moment."),
        ),
        OpStatus.NOT_FOUND: HttpOutcome(404, "not_found", _("No such action.")),
        OpStatus.ACTION_COMPLETED: HttpOutcome(
            409, "finished", _("The action has already finished.")
        ),
        OpStatus.LIMIT_REACHED: HttpOutcome(
            429,
            "limit_reached",
            _("You already have as many actions running as allowed. Wait for one to finish."),
        ),
        OpStatus.BUSY: HttpOutcome(
            409, "busy", _("This work is already running. Try again when it has finished.")
        ),
        OpStatus.KEY_REUSED: HttpOutcome(
            422,
            "key_reused",
            _("This idempotency key already names other work. Use a new key for a new start."),
        ),
    }
)


#: Why an action that already ended cannot be cancelled, by the status it ended with;
#: each reads as a sentence (a status word is no past tense of a verb: "has already
#: cancelled" is wrong).
FINISHED_MESSAGES: Mapping[str, str | Promise] = MappingProxyType(
    {
        "succeeded": _("The action has already succeeded."),
        "failed": _("The action has already failed."),
        "cancelled": _("The action was already cancelled."),
    }
)


def finished_message(status: str) -> str | Promise:
    """The refusal for an action that already ended with ``status``."""
    return FINISHED_MESSAGES.get(str(status), OUTCOMES[OpStatus.ACTION_COMPLETED].message)


def outcome(status: OpStatus) -> HttpOutcome:
    """The HTTP meaning of a service outcome."""
    return OUTCOMES[status]


def retry_headers(status: int) -> dict[str, str]:
    """``{"Retry-After": ...}`` for a 429 or 503, else nothing."""
    return {"Retry-After": str(RETRY_AFTER)} if status in RETRYABLE_STATUSES else {}


def file_response(row: ActionFile) -> FileResponse:
    """An action's file, streamed as an attachment under its cleaned name.

    Always an attachment (a stored HTML or SVG file must not run as the site's page),
    with the type recorded when it was stored and ``nosniff``; the name is encoded by
    Django (RFC 6266/5987) so quotes and non-ASCII letters cannot break the header.
    Callers check first that the visitor may see the action: this only serves it.
    """
    handle = open_for_download(row)
    if handle is None:
        raise Http404(_("The file “%(name)s” is no longer in storage.") % {"name": row.name})
    response = FileResponse(
        handle, as_attachment=True, filename=row.name, content_type=row.content_type
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response
