"""Who dispatches actions, for code below the runners that must wake one.

The runners sit high in the layers (they import the executor, which imports the
lifecycle, concurrency and fairness modules). Those lower modules must still dispatch
now and then: a released concurrency key wakes its next waiter, an owner's free place
wakes their next action, the sweep dispatches lost actions again. Importing
``async_actions.runners`` from them would be an upward import (a hidden cycle), so they
ask this registry instead; ``async_actions.runners`` fills it with ``get_runner`` when it
is imported, which the app's ``ready()`` does. Code that runs *inside* a runner gets
the runner passed down instead (``executor.execute(action_id, runner=...)``).

This module imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol
from uuid import UUID

__all__ = ["Dispatcher", "current", "install"]


class Dispatcher(Protocol):
    """What lower layers need of a runner: send an action to run, now or later; which a
    queue still holds (``runners.base.BaseRunner`` has each)."""

    def dispatch(self, action_id: UUID) -> None: ...

    def dispatch_at(self, action_id: UUID, when: datetime) -> None: ...

    def holds(self, action_ids: Iterable[UUID]) -> set[UUID]: ...

    @property
    def supports_defer(self) -> bool:
        """Whether ``dispatch_at`` hands the delay to a durable queue."""
        ...


_provider: Callable[[], Dispatcher] | None = None


def install(provider: Callable[[], Dispatcher]) -> None:
    """Name the function that gives the process's dispatcher (``runners.get_runner``)."""
    global _provider
    _provider = provider


def current() -> Dispatcher:
    """The process's dispatcher (its runner, built on first use by the provider)."""
    if _provider is None:
        raise RuntimeError(
            "No dispatcher installed: async_actions.runners is imported by the app's "
            "ready(); is 'async_actions' in INSTALLED_APPS?"
        )
    return _provider()
