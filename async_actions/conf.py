"""The one settings object: ``ASYNC_ACTIONS`` merged over documented defaults.

Like DRF's ``api_settings`` it reads Django settings lazily and forgets its cache on
``setting_changed`` so ``override_settings`` works in tests.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

SETTING_NAME = "ASYNC_ACTIONS"

#: Every key, its default and (in docs/settings.md) what it means.
DEFAULTS: dict[str, Any] = {
    # Dotted path of the runner class that executes actions.
    "RUNNER": "async_actions.runners.thread.ThreadRunner",
    # Threads in the ThreadRunner pool.
    "MAX_WORKERS": 4,
    # Seconds between database writes of progress while an action runs.
    "PROGRESS_DB_INTERVAL": 0.5,
    # Seconds between channel-layer pushes of progress while an action runs.
    "PUSH_INTERVAL": 0.05,
    # Seconds between heartbeats of running actions.
    "HEARTBEAT_INTERVAL": 5.0,
    # Seconds without a heartbeat after which a running action counts as lost.
    "STALE_AFTER": 60.0,
    # Seconds a running action may take to learn of a cancel made in another process.
    "CANCEL_POLL_INTERVAL": 1.0,
    # Seconds shutdown waits for running actions before asking them to cancel.
    "SHUTDOWN_TIMEOUT": 10.0,
    # Seconds shutdown waits after asking for cancellation before marking actions failed.
    "SHUTDOWN_GRACE": 5.0,
    # Log records kept per action (oldest dropped first).
    "LOG_LIMIT": 200,
    # Bytes of log (as JSON text) kept per action; oldest dropped first, one longer
    # record truncated.
    "LOG_LIMIT_BYTES": 65_536,
    # How long a finished action is kept before the purge command removes it.
    "RETENTION": timedelta(days=7),
    # Seconds between status polls when the browser has no WebSocket.
    "POLL_INTERVAL": 2.0,
    # Channel layer alias used for live progress (None disables pushes).
    "CHANNEL_LAYER": "default",
    # Seconds between checks that a server's channel-layer subscriptions still hold.
    "LAYER_CHECK_INTERVAL": 5.0,
    # Django Tasks backend alias used by the TasksRunner.
    "TASKS_BACKEND": "default",
    # Queue name the TasksRunner enqueues on (workers listen to queues by name).
    "TASKS_QUEUE": "default",
    # Seconds between recovery sweeps in each worker process (None: STALE_AFTER / 2).
    "SWEEP_INTERVAL": None,
    # Largest accepted request JSON in bytes.
    "MAX_REQUEST_BYTES": 1_000_000,
    # Largest progress ``data`` or response JSON in bytes.
    "MAX_PROGRESS_DATA_BYTES": 65_536,
    # Largest handler result (the response) as JSON in bytes.
    "MAX_RESPONSE_BYTES": 1_000_000,
    # Deepest nesting of lists and objects accepted in any JSON that enters the app.
    "MAX_JSON_DEPTH": 64,
    # Longest progress message in characters (longer ones are truncated).
    "MAX_MESSAGE_LENGTH": 1_000,
    # On login, move the anonymous actions the visitor's session started to the user.
    "CLAIM_SESSION_ACTIONS_ON_LOGIN": True,
    # Active (pending or running) actions one owner may have; None means no limit.
    "MAX_ACTIVE_PER_OWNER": 10,
    # Open WebSockets one owner (user, or anonymous session) may hold to one action in
    # one server process; None means no limit.
    "MAX_SOCKETS_PER_OWNER_ACTION": 20,
    # Open WebSockets one owner may hold to all actions together in one server process
    # (many finished actions must not mean many times the per-action cap); None: no limit.
    "MAX_SOCKETS_PER_OWNER": 100,
    # Active actions all anonymous visitors from one client address may have together
    # (a client that drops its cookie is a new owner per start); None means no limit.
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": 20,
    # Running actions one owner may have at once (anonymous: one client address), so one
    # owner's backlog never fills the pool; the rest wait, pending. None means no limit.
    "MAX_RUNNING_PER_OWNER": 2,
    # request.META key of the header a trusted reverse proxy sets to the client address
    # (e.g. "HTTP_X_FORWARDED_FOR"); None uses REMOTE_ADDR.
    "TRUSTED_PROXY_HEADER": None,
    # Proxies in front of the app that append to TRUSTED_PROXY_HEADER: the client
    # address is the entry this many places from the right.
    "TRUSTED_PROXY_COUNT": 1,
    # Seconds a handler may run before it is asked to cancel; None means no limit.
    # A handler's own ``time_limit`` wins.
    "TIME_LIMIT": None,
    # Seconds after the time limit before the action is failed and its thread abandoned.
    "TIME_LIMIT_GRACE": 30.0,
    # Seconds before the first retry of a handler with ``retry_on``; doubles per attempt.
    "RETRY_BACKOFF": 1.0,
    # Longest wait between retries, in seconds.
    "RETRY_BACKOFF_MAX": 600.0,
}

#: Keys whose values are dotted paths imported on access.
IMPORT_STRINGS = {"RUNNER"}


class ActionSettings:
    """Attribute access to ``ASYNC_ACTIONS`` with defaults filled in."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, SETTING_NAME, None) or {}
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid ASYNC_ACTIONS setting: {name!r}")
        if name not in self._cache:
            self._cache[name] = self.user_settings.get(name, DEFAULTS[name])
        return self._cache[name]

    def import_path(self, name: str) -> Any:
        """Import the dotted path a setting names (raises ImportError on a bad path)."""
        return import_string(getattr(self, name))

    def reload(self) -> None:
        self._cache.clear()


action_settings = ActionSettings()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        action_settings.reload()
        from async_actions import runners

        runners.reset_runner()
