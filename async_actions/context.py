"""``ActionContext``: the handler's one handle on the world while it runs."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from async_actions.payloads import clean_text

if TYPE_CHECKING:
    from async_actions.models import Action
    from async_actions.progress import Publisher

__all__ = ["ActionCancelled", "ActionContext", "ActionError", "current"]

_current: contextvars.ContextVar[ActionContext | None] = contextvars.ContextVar(
    "async_actions_context", default=None
)
_parent_logger = logging.getLogger("async_actions.actions")


class ActionCancelled(Exception):
    """Raised inside a handler to end the action as cancelled."""


class ActionError(Exception):
    """Raise with a message meant for the user; the action fails showing that message.

    Any other exception fails the action with a generic message; its details go to the
    traceback, which only staff see.
    """


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
        self._cancel_callbacks: list[Callable[[], None]] = []
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

    def request_cancel(self) -> None:
        self._publisher.cancel_requested = True
        self._signal_cancel()

    def _signal_cancel(self) -> None:
        """Set the flag and run the cancel callbacks once (an async task's ``cancel``)."""
        with self._callbacks_lock:
            first = not self._cancel.is_set()
            self._cancel.set()
            callbacks = list(self._cancel_callbacks) if first else []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _parent_logger.exception("Cancel callback of %s failed", self.action_id)

    def _on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when cancellation is requested (now, if it already was)."""
        with self._callbacks_lock:
            self._cancel_callbacks.append(callback)
            already = self._cancel.is_set()
        if already:
            callback()

    def push_state(self) -> None:
        """Push the current state now (after a change watchers should see at once)."""
        self._publisher.push()

    def __repr__(self) -> str:
        return f"<ActionContext {self.handler_name} {self.action_id}>"
