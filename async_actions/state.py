"""``ActionState``: a frozen, detached copy of what an action is doing or how it ended.

``service.get()`` answers one, so code outside a handler (a shell, a script, a test)
reads an action's progress and outcome without holding a model instance that goes
stale or could be saved back by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from async_actions.models import Action

__all__ = ["ActionState"]


@dataclass(frozen=True)
class ActionState:
    """An action's state when it was read; read it again for a newer one."""

    id: UUID
    handler: str
    #: One of ``Action.Status``: pending, running, succeeded, failed, cancelled.
    status: str
    percent: float
    message: str
    #: The handler's last progress ``data`` (JSON), or None.
    data: Any
    #: What the handler returned (JSON), once the action succeeded; else None.
    response: Any
    #: The message shown to the user when the action failed; else "".
    error: str
    cancel_requested: bool
    attempt: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, action: Action) -> ActionState:
        """The state held by ``action`` (a row, or a row with live progress laid over)."""
        return cls(
            id=action.pk,
            handler=action.handler,
            status=str(action.status),
            percent=float(action.percent),
            message=action.message,
            data=action.data,
            response=action.response,
            error=action.error,
            cancel_requested=action.cancel_requested,
            attempt=action.attempt,
            created_at=action.created_at,
            started_at=action.started_at,
            finished_at=action.finished_at,
        )

    @property
    def finished(self) -> bool:
        """Whether the action ended (succeeded, failed or cancelled); it never changes again."""
        return self.status in Action.TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == Action.Status.SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.status == Action.Status.FAILED

    @property
    def cancelled(self) -> bool:
        return self.status == Action.Status.CANCELLED
