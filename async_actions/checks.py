"""System checks: a misconfigured ``ASYNC_ACTIONS`` is reported at startup with a hint.

Per-key checks come from the table in ``conf.py`` (each row's rule, id and hint); this
module adds the checks that look at several keys or at other Django settings. Checks
inspect only: they build no runner, start no thread and touch no database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import FileSystemStorage
from django.db import router
from django.urls import NoReverseMatch, reverse
from django.utils.module_loading import import_string

from async_actions import files
from async_actions.conf import (
    DEFAULTS,
    SETTING_NAME,
    ActionSettings,
    action_settings,
    is_number,
    is_whole,
)
from async_actions.models import Action, ActionFile
from async_actions.runners import get_runner
from async_actions.runners.base import BaseRunner
from async_actions.runners.thread import ThreadRunner

#: Below this, LOG_LIMIT_BYTES keeps little more than one short record.
MIN_LOG_BYTES = 1024


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> Iterable[CheckMessage]:
    """Every bad value the settings table's rules find, then the checks across keys."""
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
    errors.extend(_check_table(raw))
    errors.extend(_check_heartbeat(raw))
    warnings = _check_log_bytes(raw)
    if errors:
        return errors + warnings
    errors.extend(_check_runner())
    errors.extend(_check_file_storage(runner_ok=not errors))
    errors.extend(_check_channel_layer(raw))
    errors.extend(_check_session_engine())
    errors.extend(_check_database_routing())
    errors.extend(_check_running_cap(raw))
    warnings.extend(_check_layer_check_interval(raw))
    return errors + warnings


def _check_table(raw: dict[str, Any]) -> list[CheckMessage]:
    """One error per key whose value breaks its row's rule (generated from conf's table)."""
    errors: list[CheckMessage] = []
    for setting in ActionSettings.table():
        value = setting.raw(raw)
        if not setting.rule.accepts(value):
            errors.append(
                Error(
                    f"{SETTING_NAME}[{setting.name!r}] is {value!r}; "
                    f"it must be {setting.rule.expected}.",
                    hint=setting.hint_for(value),
                    id=setting.check_id,
                )
            )
    return errors


def _check_heartbeat(raw: dict[str, Any]) -> list[CheckMessage]:
    heartbeat = ActionSettings.HEARTBEAT_INTERVAL.raw(raw)
    stale = ActionSettings.STALE_AFTER.raw(raw)
    if not (is_number(heartbeat) and is_number(stale)) or stale > 2 * heartbeat:
        return []
    return [
        Error(
            f"{SETTING_NAME}['STALE_AFTER'] ({stale}) must be more than twice "
            f"HEARTBEAT_INTERVAL ({heartbeat}), or live actions will be taken for lost.",
            hint="Raise STALE_AFTER or lower HEARTBEAT_INTERVAL.",
            id="async_actions.E004",
        )
    ]


def _check_log_bytes(raw: dict[str, Any]) -> list[CheckMessage]:
    log_bytes = ActionSettings.LOG_LIMIT_BYTES.raw(raw)
    if not (is_whole(log_bytes) and 1 <= log_bytes < MIN_LOG_BYTES):
        return []
    return [
        Warning(
            f"{SETTING_NAME}['LOG_LIMIT_BYTES'] is {log_bytes}: an action keeps only its "
            "last log record, cut to a few words.",
            hint=f"A log record takes about 80 bytes before its message; use "
            f"{MIN_LOG_BYTES} or more (default {DEFAULTS['LOG_LIMIT_BYTES']}).",
            id="async_actions.W070",
        )
    ]


def _check_running_cap(raw: dict[str, Any]) -> list[CheckMessage]:
    """Warn when one owner may take every thread of the ThreadRunner's pool."""
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
    if not (isinstance(runner_class, type) and issubclass(runner_class, BaseRunner)):
        return [
            Error(
                f"{SETTING_NAME}['RUNNER'] must name a subclass of BaseRunner.",
                id="async_actions.E006",
            )
        ]
    return list(get_runner().check())


def _check_file_storage(*, runner_ok: bool) -> list[CheckMessage]:
    """FILE_STORAGE must name a storage; with workers outside the web process, a local
    folder must at least be an absolute path (the same one on every machine)."""
    try:
        storage = files.get_storage()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="Use a key of STORAGES (the default is 'default') or the dotted path "
                "of a Storage class.",
                id="async_actions.E090",
            )
        ]
    if not runner_ok or not isinstance(storage, FileSystemStorage):
        return []
    location = str(storage.base_location or "")
    if get_runner().runs_in_process or os.path.isabs(location):
        return []
    where = repr(location) if location else "unset (MEDIA_ROOT is empty)"
    return [
        Warning(
            f"{SETTING_NAME}['FILE_STORAGE'] keeps files in a local folder that is {where}, "
            "so it is relative to each process's working directory: a worker started "
            "elsewhere cannot find the uploads the web server saved.",
            hint="Set MEDIA_ROOT (or the storage's location) to an absolute path that every "
            "web and worker process shares, or use a shared storage (docs/deploy.md, "
            "'Files').",
            id="async_actions.W090",
        )
    ]


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
    if not _has_session_middleware():
        return [
            Warning(
                "No SessionMiddleware in MIDDLEWARE: an anonymous visitor's action has no "
                "owner, so the start redirects them to a page that answers 404.",
                hint="Add 'django.contrib.sessions.middleware.SessionMiddleware' to "
                "MIDDLEWARE, or let only logged-in users start actions.",
                id="async_actions.W041",
            )
        ]
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


def _has_session_middleware() -> bool:
    """Whether MIDDLEWARE sets ``request.session`` (Django's middleware or a subclass)."""
    for dotted in getattr(settings, "MIDDLEWARE", None) or ():
        try:
            middleware = import_string(dotted)
        except ImportError:  # Django reports a middleware that does not import
            continue
        if isinstance(middleware, type) and issubclass(middleware, SessionMiddleware):
            return True
    return False


def _check_database_routing() -> list[CheckMessage]:
    """The app's rows live together, beside the users who own them: Django has no
    relation across databases, so a router that splits them breaks every write."""
    actions = router.db_for_write(Action)
    found: list[CheckMessage] = []
    if router.db_for_write(ActionFile) != actions:
        found.append(
            Error(
                f"DATABASE_ROUTERS send async_actions.Action to {actions!r} but "
                f"async_actions.ActionFile to {router.db_for_write(ActionFile)!r}.",
                hint="Route every model of the async_actions app to one database.",
                id="async_actions.E050",
            )
        )
    try:
        users = router.db_for_write(get_user_model())
    except (ImproperlyConfigured, LookupError):  # the model check reports it
        return found
    if users != actions:
        found.append(
            Warning(
                f"DATABASE_ROUTERS send async_actions.Action to {actions!r} and the user "
                f"model to {users!r}: an action's user is a foreign key, which Django "
                "keeps within one database.",
                hint="Route the user model (and the auth app) to the actions' database, "
                "or the actions to the users'.",
                id="async_actions.W050",
            )
        )
    return found


def _check_layer_check_interval(raw: dict[str, Any]) -> list[CheckMessage]:
    """The hub renews memberships at half the layer's group_expiry, seen at each check."""
    value = ActionSettings.LAYER_CHECK_INTERVAL.raw(raw)
    alias = ActionSettings.CHANNEL_LAYER.raw(raw)
    config = (getattr(settings, "CHANNEL_LAYERS", None) or {}).get(alias) or {}
    expiry = (config.get("CONFIG") or {}).get("group_expiry")
    if not (is_number(value) and is_number(expiry)) or value < expiry / 2:
        return []
    return [
        Warning(
            f"{SETTING_NAME}['LAYER_CHECK_INTERVAL'] ({value}) is not below half the channel "
            f"layer's group_expiry ({expiry}): group memberships may expire before the hub "
            "renews them, and open tabs stop getting updates until the next check.",
            hint="Lower LAYER_CHECK_INTERVAL or raise group_expiry.",
            id="async_actions.W080",
        )
    ]


@register(Tags.staticfiles)
def check_static_files(app_configs: Any = None, **kwargs: Any) -> Iterable[CheckMessage]:
    """With DEBUG off nothing in Django serves progress.js unless it is collected somewhere.

    Pages still work without it (they reload themselves, docs/views.md), but lose live
    progress and the script's Cancel button; this is the part a check can see.
    """
    static_url = str(getattr(settings, "STATIC_URL", "") or "")
    if settings.DEBUG or getattr(settings, "STATIC_ROOT", None):
        return []
    if static_url.startswith(("http://", "https://", "//")):  # served by another host
        return []
    return [
        Warning(
            "DEBUG is off and STATIC_ROOT is not set: nothing serves "
            "async_actions/progress.js, so processing pages lose live progress and fall "
            "back to reloading themselves.",
            hint="Set STATIC_ROOT, run manage.py collectstatic and serve it (a proxy's "
            "/static/ location, or WhiteNoise); see docs/deploy.md, 'Static files'.",
            id="async_actions.W092",
        )
    ]


@register(Tags.urls)
def check_default_action_page(app_configs: Any = None, **kwargs: Any) -> Iterable[CheckMessage]:
    """A ``DEFAULT_ACTION_PAGE`` that reverses to nothing leaves every link ``null``."""
    raw = getattr(settings, SETTING_NAME, {})
    name = raw.get("DEFAULT_ACTION_PAGE") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        return []  # unset, or a bad type check_settings reports
    try:
        reverse(name, kwargs={"pk": uuid.UUID(int=0)})
    except NoReverseMatch:
        return [
            Warning(
                f"{SETTING_NAME}['DEFAULT_ACTION_PAGE'] is {name!r}, which names no URL "
                "taking a pk: actions started outside a view have no page.",
                hint="Mount async_actions.views.ActionView (path('actions/', "
                "include(ActionView.urls()))) and use 'async_actions:processing'.",
                id="async_actions.W091",
            )
        ]
    return []
