"""The one settings object: ``ASYNC_ACTIONS`` read through one typed table.

Every key is a :class:`Setting` row on :class:`ActionSettings`: its default, the type
code gets back, the rule a valid value follows (the system checks in ``checks.py`` are
generated from it) and a line of documentation (``docs/settings.md`` is held to the table
by a test). Reading ``action_settings.MAX_WORKERS`` returns an ``int`` already, so call
sites never cast.

Like DRF's ``api_settings`` it reads Django settings lazily and forgets its cache on
``setting_changed`` so ``override_settings`` works in tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeGuard, TypeVar, overload

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

SETTING_NAME = "ASYNC_ACTIONS"

T = TypeVar("T")

#: Python's json recurses once per level and fails near 1,000 levels; leave it room.
MAX_JSON_DEPTH_CEILING = 500


# -- what a valid value is --------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A test for a raw setting value and the words a check error uses for it."""

    accepts: Callable[[object], bool]
    expected: str


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(rule: Rule) -> Rule:
    return Rule(lambda value: value is None or rule.accepts(value), f"None or {rule.expected}")


POSITIVE_SECONDS = Rule(
    lambda v: is_number(v) and v > 0,
    "a number of seconds greater than 0",
)
NON_NEGATIVE_SECONDS = Rule(
    lambda v: is_number(v) and v >= 0,
    "a number of seconds, 0 or more",
)
POSITIVE_WHOLE = Rule(lambda v: is_whole(v) and v >= 1, "a whole number, 1 or more")
OPTIONAL_LIMIT = _optional(POSITIVE_WHOLE)
OPTIONAL_SECONDS = Rule(
    lambda v: v is None or (is_number(v) and v > 0),
    "None or seconds greater than 0",
)
BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")
NAME = Rule(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
JSON_DEPTH = Rule(
    lambda v: is_whole(v) and 1 <= v <= MAX_JSON_DEPTH_CEILING,
    f"a whole number from 1 to {MAX_JSON_DEPTH_CEILING}",
)
DURATION = Rule(
    lambda v: (
        (isinstance(v, timedelta) and v.total_seconds() > 0)
        or (is_number(v) and v > 0 and math.isfinite(v))
    ),
    "a timedelta or seconds greater than 0",
)


#: A request.META key: HTTP_X_FORWARDED_FOR, not X-Forwarded-For.
_META_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
META_KEY = Rule(
    lambda v: v is None or (isinstance(v, str) and bool(_META_KEY.match(v))),
    "None or a request.META key",
)


# -- how a raw value becomes the typed one ------------------------------------------------


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))


def _proxy_header_hint(value: object) -> str:
    suggestion = (
        "HTTP_" + value.upper().replace("-", "_")
        if isinstance(value, str) and value
        else "HTTP_X_FORWARDED_FOR"
    )
    return f"Name the header as Django's request.META does, e.g. {suggestion!r}."


# -- the table ---------------------------------------------------------------------------


class Setting(Generic[T]):
    """One row of the settings table, and the typed attribute that reads it.

    ``check_id`` and ``hint`` let a key keep the system-check id it had before the table
    (``async_actions.E030`` …); every other bad value is ``async_actions.E003`` with the
    generic hint.
    """

    name: str

    def __init__(
        self,
        default: Any,
        *,
        to: Callable[[Any], T],
        rule: Rule,
        doc: str,
        check_id: str = "async_actions.E003",
        hint: str | Callable[[object], str] | None = None,
    ) -> None:
        self.default = default
        self.to = to
        self.rule = rule
        self.doc = doc
        self.check_id = check_id
        self.hint = hint

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, instance: ActionSettings, owner: type) -> T: ...
    def __get__(self, instance: ActionSettings | None, owner: type) -> Setting[T] | T:
        if instance is None:
            return self
        return instance._value(self)

    def raw(self, user_settings: dict[str, Any]) -> Any:
        """The value as configured (or the default), before conversion."""
        return user_settings.get(self.name, self.default)

    def hint_for(self, value: object) -> str:
        if callable(self.hint):
            return self.hint(value)
        if self.hint is not None:
            return self.hint
        return f"Remove it to use the default ({self.default!r}) or set a valid value."


class ActionSettings:
    """Typed attribute access to ``ASYNC_ACTIONS`` with defaults filled in.

    The class body is the settings table: one :class:`Setting` per key, in the order
    docs/settings.md presents them.
    """

    # Execution
    RUNNER = Setting[str](
        "async_actions.runners.thread.ThreadRunner",
        to=str,
        rule=NAME,
        doc="Dotted path of the runner class that executes actions.",
    )
    MAX_WORKERS = Setting[int](
        4, to=int, rule=POSITIVE_WHOLE, doc="Threads in the ThreadRunner pool."
    )
    TASKS_BACKEND = Setting[str](
        "default", to=str, rule=NAME, doc="Django Tasks backend alias used by the TasksRunner."
    )
    WORKER_CONCURRENCY = Setting[int](
        1,
        to=int,
        rule=POSITIVE_WHOLE,
        doc="Actions one ``async_actions_worker`` process runs at once, each on its own thread.",
    )
    TASKS_QUEUE = Setting[str](
        "default",
        to=str,
        rule=Rule(NAME.accepts, "a queue name"),
        doc="Queue name the TasksRunner enqueues on (workers listen to queues by name).",
    )
    SHUTDOWN_TIMEOUT = Setting[float](
        10.0,
        to=float,
        rule=NON_NEGATIVE_SECONDS,
        doc="Seconds shutdown waits for running actions before asking them to cancel.",
    )
    SHUTDOWN_GRACE = Setting[float](
        5.0,
        to=float,
        rule=NON_NEGATIVE_SECONDS,
        doc="Seconds shutdown waits after asking for cancellation before failing actions.",
    )
    PICKUP_POLL_INTERVAL = Setting[float | None](
        1.0,
        to=_optional_float,
        rule=OPTIONAL_SECONDS,
        doc="Seconds between a server's looks for actions other processes started, where "
        "no LISTEN/NOTIFY (None: no pick-up; the sweep finds them).",
    )
    RUN_WITHOUT_STARTUP = Setting[bool](
        False,
        to=bool,
        rule=BOOLEAN,
        doc="Whether the ThreadRunner runs actions in a process that never called "
        "async_actions.startup() (tests); else such a process leaves them to the server.",
    )
    # Progress and live updates
    PROGRESS_DB_INTERVAL = Setting[float](
        0.5,
        to=float,
        rule=POSITIVE_SECONDS,
        doc="Seconds between database writes of progress while an action runs.",
    )
    PUSH_INTERVAL = Setting[float](
        0.05,
        to=float,
        rule=POSITIVE_SECONDS,
        doc="Seconds between channel-layer pushes of progress while an action runs.",
    )
    CHANNEL_LAYER = Setting[str | None](
        "default",
        to=_optional_str,
        rule=_optional(NAME),
        doc="Channel layer alias used for live progress (None disables pushes).",
    )
    POLL_INTERVAL = Setting[float](
        2.0,
        to=float,
        rule=POSITIVE_SECONDS,
        doc="Seconds between status polls when the browser has no WebSocket.",
    )
    LOG_LIMIT = Setting[int](
        200, to=int, rule=POSITIVE_WHOLE, doc="Log records kept per action (oldest first out)."
    )
    LOG_LIMIT_BYTES = Setting[int](
        65_536,
        to=int,
        rule=POSITIVE_WHOLE,
        doc="Bytes of log (as JSON text) kept per action; oldest dropped, one long one cut.",
    )
    MAX_MESSAGE_LENGTH = Setting[int](
        1_000,
        to=int,
        rule=POSITIVE_WHOLE,
        doc="Longest progress message in characters (longer ones are truncated).",
    )
    MAX_SOCKETS_PER_OWNER_ACTION = Setting[int | None](
        20,
        to=_optional_int,
        rule=OPTIONAL_LIMIT,
        doc="Open WebSockets one owner may hold to one action in one process; None: no limit.",
        check_id="async_actions.E030",
        hint="A browser tab holds one socket per action it shows; "
        "the default (20) allows that many tabs.",
    )
    MAX_SOCKETS_PER_OWNER = Setting[int | None](
        100,
        to=_optional_int,
        rule=OPTIONAL_LIMIT,
        doc="Open WebSockets one owner may hold to all actions in one process; None: no limit.",
        check_id="async_actions.E030",
        hint="Many finished actions must not mean many times the per-action cap; "
        "the default (100) is plenty for a person's tabs.",
    )
    LAYER_CHECK_INTERVAL = Setting[float](
        5.0,
        to=float,
        rule=POSITIVE_SECONDS,
        doc="Seconds between checks that a server's channel-layer subscriptions still hold.",
        check_id="async_actions.E080",
    )
    MAX_PROGRESS_DATA_BYTES = Setting[int](
        65_536, to=int, rule=POSITIVE_WHOLE, doc="Largest progress ``data`` as JSON in bytes."
    )
    DEFAULT_ACTION_PAGE = Setting[str | None](
        None,
        to=_optional_str,
        rule=_optional(NAME),
        doc="URL name (reversed with pk) of the page for actions no view started; None: none.",
    )
    # Liveness and retention
    HEARTBEAT_INTERVAL = Setting[float](
        5.0,
        to=float,
        rule=POSITIVE_SECONDS,
        doc="Seconds between heartbeats of running actions.",
    )
    STALE_AFTER = Setting[float](
        60.0,
        to=float,
        rule=POSITIVE_SECONDS,
        doc="Seconds without a heartbeat after which a running action counts as lost.",
    )
    SWEEP_INTERVAL = Setting[float | None](
        None,
        to=_optional_float,
        rule=OPTIONAL_SECONDS,
        doc="Seconds between recovery sweeps in each process (None: STALE_AFTER / 2).",
    )
    CANCEL_POLL_INTERVAL = Setting[float](
        1.0,
        to=float,
        rule=POSITIVE_SECONDS,
        doc="Seconds a running action may take to learn of a cancel made elsewhere.",
    )
    RETENTION = Setting[timedelta](
        timedelta(days=7),
        to=_duration,
        rule=DURATION,
        doc="How long a finished action is kept before the purge command removes it.",
    )
    # Limits on input
    MAX_REQUEST_BYTES = Setting[int](
        1_000_000, to=int, rule=POSITIVE_WHOLE, doc="Largest accepted request JSON in bytes."
    )
    MAX_RESPONSE_BYTES = Setting[int](
        1_000_000,
        to=int,
        rule=POSITIVE_WHOLE,
        doc="Largest handler result (the response) as JSON in bytes.",
    )
    MAX_JSON_DEPTH = Setting[int](
        64,
        to=int,
        rule=JSON_DEPTH,
        doc="Deepest nesting of lists and objects accepted in any JSON that enters the app.",
        check_id="async_actions.E070",
        hint="Deeper JSON makes Python's json module raise RecursionError; remove the key "
        "to use the default (64).",
    )
    # Files: uploads and results
    FILE_STORAGE = Setting[str](
        "default",
        to=str,
        rule=NAME,
        doc="Where uploads and result files are kept: a key of STORAGES or a storage class's "
        "dotted path.",
        check_id="async_actions.E090",
    )
    MAX_FILES_PER_ACTION = Setting[int](
        20,
        to=int,
        rule=POSITIVE_WHOLE,
        doc="Files one action may keep: its uploads plus the files its handler attaches.",
    )
    MAX_FILE_BYTES = Setting[int | None](
        100_000_000,
        to=_optional_int,
        rule=OPTIONAL_LIMIT,
        doc="Largest upload or attached file in bytes; None: no limit.",
    )
    MAX_UPLOAD_BYTES_PER_OWNER = Setting[int | None](
        1_000_000_000,
        to=_optional_int,
        rule=OPTIONAL_LIMIT,
        doc="Bytes of uploads one owner may keep stored, over all their actions; None: no limit.",
    )
    DELETE_UPLOADS_AT_FINISH = Setting[bool](
        False,
        to=bool,
        rule=BOOLEAN,
        doc="Remove an action's uploaded files as soon as it finishes (result files stay).",
    )
    # Fair shares
    MAX_ACTIVE_PER_OWNER = Setting[int | None](
        10,
        to=_optional_int,
        rule=OPTIONAL_LIMIT,
        doc="Active (pending or running) actions one owner may have; None: no limit.",
    )
    MAX_ACTIVE_PER_ANONYMOUS_ADDRESS = Setting[int | None](
        20,
        to=_optional_int,
        rule=OPTIONAL_LIMIT,
        doc="Active actions all anonymous visitors from one address may have; None: no limit.",
    )
    MAX_RUNNING_PER_OWNER = Setting[int | None](
        2,
        to=_optional_int,
        rule=OPTIONAL_LIMIT,
        doc="Running actions one owner may have at once (the rest wait); None: no limit.",
    )
    TRUSTED_PROXY_HEADER = Setting[str | None](
        None,
        to=_optional_str,
        rule=META_KEY,
        doc="request.META key of the trusted proxy's client-address header; None: REMOTE_ADDR.",
        check_id="async_actions.E060",
        hint=_proxy_header_hint,
    )
    TRUSTED_PROXY_COUNT = Setting[int](
        1,
        to=int,
        rule=POSITIVE_WHOLE,
        doc="Proxies appending to TRUSTED_PROXY_HEADER: the client is this many from the right.",
    )
    # Ownership
    CLAIM_SESSION_ACTIONS_ON_LOGIN = Setting[bool](
        True,
        to=bool,
        rule=BOOLEAN,
        doc="On login, move the anonymous actions of the visitor's session to the user.",
        check_id="async_actions.E040",
        hint="True moves a visitor's anonymous actions to their user on login.",
    )
    # Time limits and retries
    TIME_LIMIT = Setting[float | None](
        None,
        to=_optional_float,
        rule=OPTIONAL_SECONDS,
        doc="Seconds a handler may run before it is asked to cancel; None: no limit.",
    )
    TIME_LIMIT_GRACE = Setting[float](
        30.0,
        to=float,
        rule=NON_NEGATIVE_SECONDS,
        doc="Seconds after the time limit before the action is failed and its thread left.",
    )
    RETRY_BACKOFF = Setting[float](
        1.0,
        to=float,
        rule=NON_NEGATIVE_SECONDS,
        doc="Seconds before the first retry of a handler with ``retry_on``; doubles per try.",
    )
    RETRY_BACKOFF_MAX = Setting[float](
        600.0,
        to=float,
        rule=NON_NEGATIVE_SECONDS,
        doc="Longest wait between retries, in seconds.",
    )

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @classmethod
    def table(cls) -> Iterator[Setting[Any]]:
        """Every setting, in declaration order."""
        for value in vars(cls).values():
            if isinstance(value, Setting):
                yield value

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, SETTING_NAME, None) or {}
        return value if isinstance(value, dict) else {}

    def _value(self, setting: Setting[T]) -> T:
        if setting.name not in self._cache:
            raw = setting.raw(self.user_settings)
            try:
                self._cache[setting.name] = setting.to(raw)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ImproperlyConfigured(
                    f"{SETTING_NAME}[{setting.name!r}] is {raw!r}; it must be "
                    f"{setting.rule.expected} (run manage.py check)."
                ) from exc
        return self._cache[setting.name]  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not in the table.
        raise AttributeError(f"Invalid ASYNC_ACTIONS setting: {name!r}")

    # -- derived settings: computed from the table, typed like it ---------------------

    @property
    def sweep_interval(self) -> float:
        """Seconds between recovery sweeps: ``SWEEP_INTERVAL`` or half of ``STALE_AFTER``."""
        value = self.SWEEP_INTERVAL
        return value if value is not None else self.STALE_AFTER / 2

    @property
    def stale_after(self) -> timedelta:
        """``STALE_AFTER`` as a duration: a running row's heartbeat older than this is lost."""
        return timedelta(seconds=self.STALE_AFTER)

    @property
    def poll_ms(self) -> int:
        """``POLL_INTERVAL`` in milliseconds, as the browser's element takes it."""
        return int(self.POLL_INTERVAL * 1000)

    def import_path(self, name: str) -> Any:
        """Import the dotted path a setting names (raises ImportError on a bad path)."""
        return import_string(getattr(self, name))

    def reload(self) -> None:
        self._cache.clear()


#: Every key and its default, for code that wants the plain mapping.
DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in ActionSettings.table()}

#: Keys whose values are dotted paths imported on access.
IMPORT_STRINGS = {"RUNNER"}

action_settings = ActionSettings()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        action_settings.reload()  # the runners' own hook then forgets the runner
