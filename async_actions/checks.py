"""System checks: a misconfigured ``ASYNC_ACTIONS`` is reported at startup with a hint."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from async_actions.conf import DEFAULTS, SETTING_NAME, action_settings

_POSITIVE_NUMBERS = (
    "PROGRESS_DB_INTERVAL",
    "PUSH_INTERVAL",
    "HEARTBEAT_INTERVAL",
    "STALE_AFTER",
    "CANCEL_POLL_INTERVAL",
    "POLL_INTERVAL",
)
_NON_NEGATIVE_NUMBERS = (
    "SHUTDOWN_TIMEOUT",
    "SHUTDOWN_GRACE",
    "TIME_LIMIT_GRACE",
    "RETRY_BACKOFF",
    "RETRY_BACKOFF_MAX",
)
_POSITIVE_INTEGERS = (
    "MAX_WORKERS",
    "LOG_LIMIT",
    "MAX_REQUEST_BYTES",
    "MAX_PROGRESS_DATA_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_MESSAGE_LENGTH",
    "LOG_LIMIT_BYTES",
    "TRUSTED_PROXY_COUNT",
)
#: Python's json recurses once per level and fails near 1,000 levels; leave it room.
MAX_JSON_DEPTH_CEILING = 500
#: Below this, LOG_LIMIT_BYTES keeps little more than one short record.
MIN_LOG_BYTES = 1024
#: Whole numbers 1 or more, or None for no limit.
_OPTIONAL_LIMITS = (
    "MAX_ACTIVE_PER_OWNER",
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS",
    "MAX_RUNNING_PER_OWNER",
)
#: A request.META key: HTTP_X_FORWARDED_FOR, not X-Forwarded-For.
_META_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> Iterable[CheckMessage]:
    raw = getattr(settings, SETTING_NAME, {})
    if not isinstance(raw, dict):
        return [
            Error(
                f"{SETTING_NAME} must be a dict, not {type(raw).__name__}.",
                hint="Set ASYNC_ACTIONS = {'MAX_WORKERS': 4, ...} in your settings.",
                id="async_actions.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for key in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            Error(
                f"{SETTING_NAME}[{key!r}] is not a known setting.",
                hint=f"Known settings: {', '.join(sorted(DEFAULTS))}.",
                id="async_actions.E002",
            )
        )
    for key in _POSITIVE_NUMBERS:
        value = raw.get(key, DEFAULTS[key])
        if not _is_number(value) or value <= 0:
            errors.append(_bad(key, value, "a number of seconds greater than 0"))
    for key in _NON_NEGATIVE_NUMBERS:
        value = raw.get(key, DEFAULTS[key])
        if not _is_number(value) or value < 0:
            errors.append(_bad(key, value, "a number of seconds, 0 or more"))
    for key in _POSITIVE_INTEGERS:
        value = raw.get(key, DEFAULTS[key])
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(_bad(key, value, "a whole number, 1 or more"))
    depth = raw.get("MAX_JSON_DEPTH", DEFAULTS["MAX_JSON_DEPTH"])
    if (
        not isinstance(depth, int)
        or isinstance(depth, bool)
        or not 1 <= depth <= MAX_JSON_DEPTH_CEILING
    ):
        errors.append(
            Error(
                f"{SETTING_NAME}['MAX_JSON_DEPTH'] is {depth!r}; it must be a whole number "
                f"from 1 to {MAX_JSON_DEPTH_CEILING}.",
                hint="Deeper JSON makes Python's json module raise RecursionError; remove "
                f"the key to use the default ({DEFAULTS['MAX_JSON_DEPTH']}).",
                id="async_actions.E070",
            )
        )
    log_bytes = raw.get("LOG_LIMIT_BYTES", DEFAULTS["LOG_LIMIT_BYTES"])
    warnings: list[CheckMessage] = []
    if isinstance(log_bytes, int) and 1 <= log_bytes < MIN_LOG_BYTES:
        warnings.append(
            Warning(
                f"{SETTING_NAME}['LOG_LIMIT_BYTES'] is {log_bytes}: an action keeps only its "
                "last log record, cut to a few words.",
                hint=f"A log record takes about 80 bytes before its message; use "
                f"{MIN_LOG_BYTES} or more (default {DEFAULTS['LOG_LIMIT_BYTES']}).",
                id="async_actions.W070",
            )
        )
    for key in _OPTIONAL_LIMITS:
        limit = raw.get(key, DEFAULTS[key])
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            errors.append(_bad(key, limit, "None or a whole number, 1 or more"))
    errors.extend(_check_proxy_header(raw))
    sweep = raw.get("SWEEP_INTERVAL")
    if sweep is not None and (not _is_number(sweep) or sweep <= 0):
        errors.append(_bad("SWEEP_INTERVAL", sweep, "None or seconds greater than 0"))
    queue_name = raw.get("TASKS_QUEUE", DEFAULTS["TASKS_QUEUE"])
    if not isinstance(queue_name, str) or not queue_name:
        errors.append(_bad("TASKS_QUEUE", queue_name, "a queue name"))
    time_limit = raw.get("TIME_LIMIT")
    if time_limit is not None and (not _is_number(time_limit) or time_limit <= 0):
        errors.append(_bad("TIME_LIMIT", time_limit, "None or seconds greater than 0"))
    retention = raw.get("RETENTION", DEFAULTS["RETENTION"])
    if not (isinstance(retention, timedelta) or _is_number(retention)) or (
        (retention.total_seconds() if isinstance(retention, timedelta) else retention) <= 0
    ):
        errors.append(_bad("RETENTION", retention, "a timedelta or seconds greater than 0"))
    heartbeat, stale = raw.get("HEARTBEAT_INTERVAL", 5.0), raw.get("STALE_AFTER", 60.0)
    if _is_number(heartbeat) and _is_number(stale) and stale <= 2 * heartbeat:
        errors.append(
            Error(
                f"{SETTING_NAME}['STALE_AFTER'] ({stale}) must be more than twice "
                f"HEARTBEAT_INTERVAL ({heartbeat}), or live actions will be taken for lost.",
                hint="Raise STALE_AFTER or lower HEARTBEAT_INTERVAL.",
                id="async_actions.E004",
            )
        )
    claim = raw.get("CLAIM_SESSION_ACTIONS_ON_LOGIN", True)
    if not isinstance(claim, bool):
        errors.append(
            Error(
                f"{SETTING_NAME}['CLAIM_SESSION_ACTIONS_ON_LOGIN'] is {claim!r}; "
                "it must be True or False.",
                hint="True moves a visitor's anonymous actions to their user on login.",
                id="async_actions.E040",
            )
        )
    errors.extend(_check_websocket_settings(raw))
    errors.extend(_check_layer_check_interval(raw))
    if errors:
        return errors + warnings
    errors.extend(_check_runner())
    errors.extend(_check_channel_layer(raw))
    errors.extend(_check_session_engine())
    errors.extend(_check_running_cap(raw))
    return errors + warnings


def _check_websocket_settings(raw: dict[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for name in ("MAX_SOCKETS_PER_OWNER_ACTION", "MAX_SOCKETS_PER_OWNER"):
        cap = raw.get(name, DEFAULTS[name])
        if cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1):
            continue
        errors.append(
            Error(
                f"{SETTING_NAME}['{name}'] is {cap!r}; it must be None "
                "or a whole number, 1 or more.",
                hint="A browser tab holds one socket per action it shows; "
                f"the default ({DEFAULTS[name]}) allows that many tabs.",
                id="async_actions.E030",
            )
        )
    return errors


def _check_proxy_header(raw: dict[str, Any]) -> list[CheckMessage]:
    header = raw.get("TRUSTED_PROXY_HEADER")
    if header is None or (isinstance(header, str) and _META_KEY.match(header)):
        return []
    suggestion = (
        "HTTP_" + header.upper().replace("-", "_")
        if isinstance(header, str) and header
        else "HTTP_X_FORWARDED_FOR"
    )
    return [
        Error(
            f"{SETTING_NAME}['TRUSTED_PROXY_HEADER'] is {header!r}; it must be None or a "
            "request.META key.",
            hint=f"Name the header as Django's request.META does, e.g. {suggestion!r}.",
            id="async_actions.E060",
        )
    ]


def _check_running_cap(raw: dict[str, Any]) -> list[CheckMessage]:
    """Warn when one owner may take every thread of the ThreadRunner's pool."""
    from async_actions.runners.thread import ThreadRunner

    cap = raw.get("MAX_RUNNING_PER_OWNER", DEFAULTS["MAX_RUNNING_PER_OWNER"])
    workers = raw.get("MAX_WORKERS", DEFAULTS["MAX_WORKERS"])
    try:
        runner_class = action_settings.import_path("RUNNER")  # the class: no runner is built
    except ImportError:
        return []  # reported by _check_runner
    if (
        cap is None
        or workers < 2
        or cap < workers
        or not (isinstance(runner_class, type) and issubclass(runner_class, ThreadRunner))
    ):
        return []
    return [
        Warning(
            f"{SETTING_NAME}['MAX_RUNNING_PER_OWNER'] ({cap}) is not below MAX_WORKERS "
            f"({workers}): one visitor's backlog can fill the pool and hold up everyone else.",
            hint="Set MAX_RUNNING_PER_OWNER below MAX_WORKERS (the default is 2), or None "
            "to turn the cap off deliberately.",
            id="async_actions.W060",
        )
    ]


def _bad(key: str, value: Any, expected: str) -> Error:
    return Error(
        f"{SETTING_NAME}[{key!r}] is {value!r}; it must be {expected}.",
        hint=f"Remove it to use the default ({DEFAULTS[key]!r}) or set a valid value.",
        id="async_actions.E003",
    )


def _check_runner() -> list[CheckMessage]:
    try:
        runner_class = action_settings.import_path("RUNNER")
    except ImportError as exc:
        return [
            Error(
                f"{SETTING_NAME}['RUNNER'] could not be imported: {exc}",
                hint="Use 'async_actions.runners.thread.ThreadRunner' or "
                "'async_actions.runners.tasks.TasksRunner'.",
                id="async_actions.E005",
            )
        ]
    from async_actions.runners import get_runner
    from async_actions.runners.base import BaseRunner

    if not (isinstance(runner_class, type) and issubclass(runner_class, BaseRunner)):
        return [
            Error(
                f"{SETTING_NAME}['RUNNER'] must name a subclass of BaseRunner.",
                id="async_actions.E006",
            )
        ]
    return list(get_runner().check())


def _check_channel_layer(raw: dict[str, Any]) -> list[CheckMessage]:
    alias = raw.get("CHANNEL_LAYER", DEFAULTS["CHANNEL_LAYER"])
    if alias is None:
        return []
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    if alias not in layers:
        return [
            Warning(
                f"{SETTING_NAME}['CHANNEL_LAYER'] is {alias!r} but CHANNEL_LAYERS has no such "
                "alias, so progress is not pushed live (pages fall back to polling).",
                hint="Add CHANNEL_LAYERS = {'default': {'BACKEND': "
                "'channels.layers.InMemoryChannelLayer'}} or set CHANNEL_LAYER to None.",
                id="async_actions.W001",
            )
        ]
    return []


def _check_session_engine() -> list[CheckMessage]:
    """Anonymous ownership rests on a session key the server holds and can revoke."""
    engine = getattr(settings, "SESSION_ENGINE", "")
    if engine != "django.contrib.sessions.backends.signed_cookies":
        return []
    return [
        Warning(
            "SESSION_ENGINE is signed_cookies: its key changes whenever the session data "
            "does and logout cannot revoke it, so anonymous visitors cannot own actions "
            "reliably.",
            hint="Use a server-side session engine (db, cache, cached_db or file), or let "
            "only logged-in users start actions.",
            id="async_actions.W040",
        )
    ]


def _check_layer_check_interval(raw: dict[str, Any]) -> list[CheckMessage]:
    """The hub renews memberships at half the layer's group_expiry, seen at each check."""
    key = "LAYER_CHECK_INTERVAL"
    value = raw.get(key, DEFAULTS[key])
    if not _is_number(value) or value <= 0:
        return [
            Error(
                f"{SETTING_NAME}[{key!r}] is {value!r}; it must be a number of seconds "
                "greater than 0.",
                hint=f"Remove it to use the default ({DEFAULTS[key]!r}) or set a valid value.",
                id="async_actions.E080",
            )
        ]
    alias = raw.get("CHANNEL_LAYER", DEFAULTS["CHANNEL_LAYER"])
    config = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(alias) or {}
    expiry = (config.get("CONFIG") or {}).get("group_expiry")
    if _is_number(expiry) and value >= expiry / 2:
        return [
            Warning(
                f"{SETTING_NAME}[{key!r}] ({value}) is not below half the channel layer's "
                f"group_expiry ({expiry}): group memberships may expire before the hub "
                "renews them, and open tabs stop getting updates until the next check.",
                hint="Lower LAYER_CHECK_INTERVAL or raise group_expiry.",
                id="async_actions.W080",
            )
        ]
    return []
