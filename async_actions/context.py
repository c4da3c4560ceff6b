"""``ActionContext``: the handler's one handle on the world while it runs."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from async_actions.exceptions import ActionCancelled, ActionError
from async_actions.files import StoredFile, add_file
from async_actions.models import ActionFile
from async_actions.payloads import clean_text

if TYPE_CHECKING:
    from async_actions.models import Action
    from async_actions.progress import Publisher

__all__ = ["ActionCancelled", "ActionContext", "ActionError", "current"]

_current: contextvars.ContextVar[ActionContext | None] = contextvars.ContextVar(
    "async_actions_context", default=None
)
_parent_logger = logging.getLogger("async_actions.actions")

#: Callbacks told about every progress report of one action, by action id: how
#: ``async_actions.testing`` records progress (pushes and writes are coalesced, so
#: neither shows every report). Each gets the context and the state after the report.
progress_observers: dict[UUID, Callable[[ActionContext, dict[str, Any]], object]] = {}


def current() -> ActionContext | None:
    """The context of the action running in this thread or task, if any.

    Lets functions started with ``perform()`` report progress without a ``ctx`` argument.
    """
    return _current.get()


class _ActionLogHandler(logging.Handler):
    def __init__(self, publisher: Publisher) -> None:
        super().__init__(logging.DEBUG)
        self.publisher = publisher

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not kill the handler
            message = record.msg  # clean_text below never raises, even for this
        self.publisher.add_log(
            {
                "time": record.created,
                "level": record.levelname,
                "message": clean_text(message, 10_000),
            }
        )


class ActionContext:
    """Progress, log and cancellation for one running action.

    ``set_progress`` is cheap enough for tight loops: writes and pushes are coalesced
    by the publisher.
    """

    def __init__(self, action: Action, publisher: Publisher) -> None:
        self.action_id: UUID = action.pk
        self.handler_name: str = action.handler
        self.request: Any = action.request
        self.attempt: int = action.attempt
        self.user_id: Any = action.user_id
        self.session_key: str = action.session_key
        self.started_monotonic = time.monotonic()
        self._publisher = publisher
        self._cancel = threading.Event()
        self._cancel_reason = ""
        #: Stored as the error of the action if it ends cancelled (see :meth:`cancel`).
        self.cancel_error = ""
        self._cancel_callbacks: list[Callable[[], object]] = []
        self._callbacks_lock = threading.Lock()
        logger = logging.Logger(f"async_actions.actions.{action.handler}", logging.DEBUG)
        logger.parent = _parent_logger
        logger.addHandler(_ActionLogHandler(publisher))
        #: A ``logging.Logger`` whose records are kept on the action (``LOG_LIMIT``).
        self.log: logging.Logger = logger

    def set_progress(
        self,
        percent: float | None = None,
        message: str | None = None,
        data: Any = None,
    ) -> None:
        """Report progress; ``percent`` is 0 to 100, ``data`` any small JSON value."""
        self._publisher.update(percent, message, data)
        observer = progress_observers.get(self.action_id)
        if observer is not None:
            observer(self, self._publisher.snapshot())

    @property
    def cancelled(self) -> bool:
        """Whether someone asked this action to stop."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise ActionCancelled when a cancel was requested; call it between steps."""
        if self._cancel.is_set():
            raise ActionCancelled()

    def wait_cancelled(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancel; True if cancelled."""
        return self._cancel.wait(timeout)

    @property
    def cancel_reason(self) -> str:
        """Why the action was asked to stop ("" while it was not)."""
        return self._cancel_reason

    def cancel(self, reason: str = "requested", *, error: str = "") -> None:
        """Ask the handler to stop, the way a user's cancel does.

        ``cancelled`` turns true, ``raise_if_cancelled()`` raises and an async handler
        gets ``CancelledError``; watchers see the cancel requested. ``reason`` (kept in
        :attr:`cancel_reason`, the first one wins) goes to the ``async_actions`` log.
        ``error``, when no user asked (a process exit), is stored as the cancelled
        action's error so that it says why.
        """
        self._publisher.cancel_requested = True
        if error and not self._cancel.is_set():
            self.cancel_error = error
        self._signal_cancel(reason)

    def request_cancel(self) -> None:
        """Same as :meth:`cancel` with no reason (kept for existing callers)."""
        self.cancel()

    def _signal_cancel(self, reason: str) -> None:
        """Set the flag and run the cancel callbacks once (an async task's ``cancel``).

        The time limit stops a handler this way: no user asked, so watchers see no
        cancel request.
        """
        with self._callbacks_lock:
            first = not self._cancel.is_set()
            self._cancel.set()
            if first:
                self._cancel_reason = reason
            callbacks = list(self._cancel_callbacks) if first else []
        if first:
            _parent_logger.info("Action %s asked to cancel: %s", self.action_id, reason)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _parent_logger.exception("Cancel callback of %s failed", self.action_id)

    def _on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when cancellation is requested (now, if it already was)."""
        with self._callbacks_lock:
            self._cancel_callbacks.append(callback)
            already = self._cancel.is_set()
        if already:
            callback()

    def attach_file(self, name: str, content: Any, content_type: str | None = None) -> StoredFile:
        """Keep a file as a result of this action (a report, an export): listed with
        download links on the result page, in the API and the admin, for whoever may see
        the action, and removed with it.

        ``content`` is bytes, text (saved as UTF-8), a Django ``File`` or an open file
        object. ``name`` is cleaned (no folders; a taken name gets a suffix); the
        content type is guessed from it unless given. Raises ``FileLimitError`` (an
        ``ActionError``) over ``MAX_FILE_BYTES`` or ``MAX_FILES_PER_ACTION``.
        """
        return add_file(self.action_id, name, content, content_type=content_type)

    def files(self, kind: str | None = None) -> list[StoredFile]:
        """The action's files so far: uploads (``"input"``), results (``"output"``) or both."""
        rows = ActionFile.objects.primary().filter(action_id=self.action_id)
        if kind is not None:
            rows = rows.filter(kind=kind)
        return [StoredFile(row) for row in rows]

    def push_state(self) -> None:
        """Push the current state now (after a change watchers should see at once)."""
        self._publisher.push()

    def __repr__(self) -> str:
        return f"<ActionContext {self.handler_name} {self.action_id}>"
