"""Runners execute actions: chosen by dotted path in ``ASYNC_ACTIONS['RUNNER']``."""

from __future__ import annotations

import threading
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from async_actions import dispatcher
from async_actions.conf import SETTING_NAME, action_settings
from async_actions.runners.base import BaseRunner

__all__ = ["BaseRunner", "get_runner", "reset_runner"]

_runner: BaseRunner | None = None
_lock = threading.Lock()


def get_runner() -> BaseRunner:
    """The process's runner, built on first use from settings."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = action_settings.import_path("RUNNER")()
        return _runner


def reset_runner() -> None:
    """Forget the runner (after settings change); a running one is shut down first."""
    global _runner
    with _lock:
        old, _runner = _runner, None
    if old is not None:
        old.close()


@receiver(setting_changed)
def _reset_on_change(*, setting: str, **kwargs: Any) -> None:
    """The runner is built from ``ASYNC_ACTIONS``: after a change (tests) the next
    ``get_runner()`` builds a new one from the new settings."""
    if setting == SETTING_NAME:
        reset_runner()


# Code below the runners (concurrency, fairness, recovery, ...) dispatches through this.
dispatcher.install(get_runner)
