"""Runners execute actions: chosen by dotted path in ``ASYNC_ACTIONS['RUNNER']``."""

from __future__ import annotations

import threading

from async_actions import dispatcher
from async_actions.runners.base import BaseRunner

__all__ = ["BaseRunner", "get_runner", "reset_runner"]

_runner: BaseRunner | None = None
_lock = threading.Lock()


def get_runner() -> BaseRunner:
    """The process's runner, built on first use from settings."""
    global _runner
    with _lock:
        if _runner is None:
            from async_actions.conf import action_settings

            _runner = action_settings.import_path("RUNNER")()
        return _runner


def reset_runner() -> None:
    """Forget the runner (after settings change); a running one is shut down first."""
    global _runner
    with _lock:
        old, _runner = _runner, None
    if old is not None:
        old.close()


# Code below the runners (concurrency, fairness, recovery, ...) dispatches through this.
dispatcher.install(get_runner)
