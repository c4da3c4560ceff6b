"""The contract every runner keeps, shaped like a Django Tasks backend."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from django.core.checks import CheckMessage


class BaseRunner:
    """Executes actions somewhere: in this process's threads, or in other workers."""

    def __init__(self) -> None:
        self.accepting = True

    def dispatch(self, action_id: UUID) -> None:
        """Arrange for ``executor.execute(action_id)`` to run; called after commit."""
        raise NotImplementedError

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting work and let running actions end; nothing stays running."""
        self.accepting = False

    def close(self) -> None:
        """Release resources when settings change (tests); defaults to shutdown."""
        self.shutdown(timeout=0)

    def check(self) -> Iterable[CheckMessage]:
        """System-check messages about this runner's configuration."""
        return ()
