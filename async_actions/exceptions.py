"""Every exception the package raises on purpose, under one base class.

``except AsyncActionsError`` catches them all. Expected outcomes of the service API
(a finished action, a database that is down) are ``OpStatus`` values, not exceptions;
these are for programmer errors (a bad handler definition, a request that is not JSON)
and for a handler's own ways to end its action (:class:`ActionError`,
:class:`ActionCancelled`). The modules that raise them re-export them, so older import
paths (``async_actions.payloads.PayloadError``, ...) keep working.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "ActionCancelled",
    "ActionError",
    "AsyncActionsError",
    "EscapedBaseException",
    "FileLimitError",
    "FileMissing",
    "HandlerError",
    "PayloadError",
    "PayloadTooLarge",
    "ProgressError",
    "StartRefused",
]


class AsyncActionsError(Exception):
    """The base class of every exception defined by async_actions."""


class HandlerError(AsyncActionsError, ImproperlyConfigured):
    """A handler is defined or used wrongly; the message says how to fix it."""


class PayloadError(AsyncActionsError, TypeError, ValueError):
    """A value cannot be stored as an action's JSON; the message says why.

    Both a TypeError (not JSON) and a ValueError (bad content), so callers may catch
    either.
    """


class PayloadTooLarge(PayloadError):
    """The value is valid JSON but longer than its size limit (HTTP 413 at the edges)."""


class ProgressError(PayloadError):
    """A handler reported progress that cannot be stored; the message says why."""


class ActionCancelled(AsyncActionsError):
    """Raised inside a handler to end the action as cancelled."""


class ActionError(AsyncActionsError):
    """Raise with a message meant for the user; the action fails showing that message.

    Any other exception fails the action with a generic message; its details go to the
    traceback, which only staff see.
    """


class FileMissing(ActionError):
    """An action's file is no longer in storage (removed, or a worker that cannot reach
    the storage the web server saved it to); the message names the file."""


class FileLimitError(ActionError):
    """A file is over ``MAX_FILE_BYTES``, or an action would keep more than
    ``MAX_FILES_PER_ACTION`` files; the message names the setting."""


class EscapedBaseException(AsyncActionsError):
    """Carries a handler's ``BaseException`` (not ``CancelledError``) off the loop.

    An asyncio task re-raises ``SystemExit`` and ``KeyboardInterrupt`` into the loop,
    which stops it and leaves the waiting runner thread blocked for good; wrapped in an
    ordinary exception it reaches the executor like any other failure.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


class StartRefused(AsyncActionsError):
    """A scheduled start (Celery beat's ``async_actions.start_action``) was refused; the
    message names the service's ``OpStatus``, so the scheduler records a failed run."""
