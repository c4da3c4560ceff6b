"""The handler registry: what work exists, with which options, and how to find it by name.

A handler is found by name. Names registered in this process win; a dotted-path name
(functions started with ``perform()``, view classes) is imported on demand so a worker
in another process can run it without the site importing anything special.

A handler's options (attempts, concurrency key, time limit, retries) are one frozen
:class:`HandlerOptions`, validated when it is built, whether they come from
``@handler(...)`` keywords, an :class:`ActionHandler` subclass's attributes or a view's.
``@handler(...)`` returns a :class:`Handle` with ``start()`` / ``astart()``, as
django-tasks' ``@task`` returns a ``Task``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from asgiref.sync import sync_to_async
from django.utils.module_loading import import_string

from async_actions.conf import action_settings
from async_actions.exceptions import HandlerError

if TYPE_CHECKING:
    from async_actions.context import ActionContext
    from async_actions.service import StartResult

__all__ = [
    "FROM_SETTINGS",
    "ActionHandler",
    "Handle",
    "HandlerError",
    "HandlerOptions",
    "get_handler",
    "handler",
    "registered_handlers",
]

#: ``service.start``, installed by the service as it is imported (the app's ``ready()``
#: imports it). The service sits above this layer, so a handle cannot import it: the
#: service hands itself down, as the runners hand themselves to ``dispatcher``.
_starter: Callable[..., StartResult] | None = None


def install_starter(start: Callable[..., StartResult]) -> None:
    """Name the function ``Handle.start`` calls (``service.start``)."""
    global _starter
    _starter = start


_registry: dict[str, ActionHandler] = {}
_lock = threading.RLock()


class _FromSettings:
    """Marks a capability that takes its value from ``ASYNC_ACTIONS`` settings."""

    def __repr__(self) -> str:
        return "FROM_SETTINGS"


#: ``time_limit`` default: use ``ASYNC_ACTIONS['TIME_LIMIT']`` (``None`` means no limit).
FROM_SETTINGS: Any = _FromSettings()

#: The ``on_busy`` choices: wait in ``pending`` until the key frees, or refuse the start.
ON_BUSY_CHOICES = ("wait", "refuse")

ConcurrencyKey = str | Callable[[Any], "str | None"] | None


def _is_seconds(value: object, *, allow_zero: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value >= 0 if allow_zero else value > 0


@dataclasses.dataclass(frozen=True)
class HandlerOptions:
    """How the engine treats one handler's actions; checked when built, never changed.

    The same fields are ``@handler(...)`` keywords and :class:`ActionHandler` (or view)
    class attributes. A bad value raises :class:`HandlerError` saying how to fix it.
    """

    #: Whether clients (the REST API) may start this handler by name.
    public: bool = True
    #: How many times the action may run in all: retries after a ``retry_on`` exception
    #: and re-runs after a lost worker count against it.
    max_attempts: int = 1
    #: Actions whose keys are equal never run at the same time: a string, a function of
    #: the request returning one (or None), or None.
    concurrency_key: ConcurrencyKey = None
    #: While the key is busy a start either ``"wait"``\s in pending or is ``"refuse"``\d.
    on_busy: str = "wait"
    #: Seconds before the handler is asked to cancel (``None``: no limit); the default
    #: reads ``ASYNC_ACTIONS['TIME_LIMIT']`` when the action runs.
    time_limit: float | None = FROM_SETTINGS
    #: Exceptions after which the action is tried again while attempts are left (one
    #: class is accepted and stored as a tuple).
    retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds before the first retry, doubling each time (``None``: ``RETRY_BACKOFF``).
    retry_backoff: float | None = None
    #: The longest wait between retries (``None``: ``RETRY_BACKOFF_MAX``).
    retry_backoff_max: float | None = None

    def __post_init__(self) -> None:
        retry_on: Any = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple | list) or not all(
            isinstance(cls, type) and issubclass(cls, BaseException) for cls in retry_on
        ):
            raise HandlerError("retry_on must be an exception class or a tuple of them.")
        # Frozen: normalizing while the instance is built is the one write it allows.
        object.__setattr__(self, "retry_on", tuple(retry_on))
        self._validate()

    def _validate(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise HandlerError("max_attempts must be a whole number, 1 or more.")
        key = self.concurrency_key
        if (
            key is not None
            and not callable(key)
            and (not isinstance(key, str) or not key or len(key) > 255)
        ):
            raise HandlerError(
                "concurrency_key must be a non-empty string of at most 255 "
                "characters, a function of the request, or None."
            )
        if self.on_busy not in ON_BUSY_CHOICES:
            raise HandlerError(f"on_busy must be 'wait' or 'refuse', not {self.on_busy!r}.")
        limit = self.time_limit
        if (
            limit is not FROM_SETTINGS
            and limit is not None
            and not _is_seconds(limit, allow_zero=False)
        ):
            raise HandlerError("time_limit must be seconds greater than 0, or None.")
        if self.retry_on and attempts < 2:
            raise HandlerError(
                f"retry_on has no effect with max_attempts={attempts}; "
                "set max_attempts to 2 or more."
            )
        for attr in ("retry_backoff", "retry_backoff_max"):
            value = getattr(self, attr)
            if value is not None and not _is_seconds(value, allow_zero=True):
                raise HandlerError(f"{attr} must be seconds (0 or more), or None.")

    @classmethod
    def from_attributes(cls, source: Any, **overrides: Any) -> HandlerOptions:
        """Options from the attributes ``source`` (a class or an instance) declares.

        Read statically, so a function set as ``concurrency_key`` on a class stays a
        function of the request instead of becoming a method bound to the handler.
        """
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            try:
                raw = inspect.getattr_static(source, field.name)
            except AttributeError:
                continue
            if isinstance(raw, staticmethod | classmethod | property):
                raw = getattr(source, field.name)
            values[field.name] = raw
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> HandlerOptions:
        """A copy with ``changes``, validated like the original."""
        return dataclasses.replace(self, **changes)

    @property
    def resolved_time_limit(self) -> float | None:
        """Seconds the handler may run before it is asked to cancel, or None."""
        if self.time_limit is FROM_SETTINGS:
            return action_settings.TIME_LIMIT
        return self.time_limit

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` failed: exponential, capped."""
        base = action_settings.RETRY_BACKOFF if self.retry_backoff is None else self.retry_backoff
        cap = (
            action_settings.RETRY_BACKOFF_MAX
            if self.retry_backoff_max is None
            else self.retry_backoff_max
        )
        return float(min(float(base) * 2 ** max(0, attempt - 1), float(cap)))


def handler_options(name: Any, build: Callable[[], HandlerOptions]) -> HandlerOptions:
    """``build()``, with the handler's name in front of a HandlerError's message."""
    try:
        return build()
    except HandlerError as exc:
        raise HandlerError(f"Handler {name!r}: {exc}") from None


class ActionHandler:
    """Base class for a kind of work.

    Subclasses that set ``name`` register themselves. Their option attributes (the
    fields of :class:`HandlerOptions`) become :attr:`options` when registered.
    ``can_handle`` lets ``service.start(request=...)`` pick a handler without naming one.
    """

    #: Unique name stored on each action; subclasses without one are abstract.
    name: ClassVar[str] = ""
    #: Whether clients (the REST API) may start this handler by name.
    public: ClassVar[bool] = True
    #: How many times the action may run in all: retries after a ``retry_on`` exception
    #: and re-runs after a lost worker count against it.
    max_attempts: ClassVar[int] = 1
    #: Actions whose keys are equal never run at the same time. Keys are site-wide, so
    #: two handlers may share one; a function here receives the request (not ``self``);
    #: override :meth:`get_concurrency_key` to derive the key with the handler at hand.
    concurrency_key: ClassVar[ConcurrencyKey] = None
    #: While the key is busy a start either ``"wait"``\s in pending or is ``"refuse"``\d
    #: (``OpStatus.BUSY``).
    on_busy: ClassVar[str] = "wait"
    #: Seconds before the handler is asked to cancel (``None``: no limit); after
    #: ``TIME_LIMIT_GRACE`` more it is failed and its thread abandoned.
    time_limit: ClassVar[float | None] = FROM_SETTINGS
    #: Exceptions after which the action is tried again while attempts are left.
    retry_on: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Seconds before the first retry, doubling each time (``None``: ``RETRY_BACKOFF``).
    retry_backoff: ClassVar[float | None] = None
    #: The longest wait between retries (``None``: ``RETRY_BACKOFF_MAX``).
    retry_backoff_max: ClassVar[float | None] = None

    def __init__(self, options: HandlerOptions | None = None) -> None:
        if options is not None:
            self.__dict__["options"] = options
            # Instance attributes agree with the options for code that reads them.
            for field in dataclasses.fields(options):
                self.__dict__[field.name] = getattr(options, field.name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register(cls())

    @cached_property
    def options(self) -> HandlerOptions:
        """The validated options: given when built, or read from the class attributes."""
        return handler_options(self.name, lambda: HandlerOptions.from_attributes(self))

    def can_handle(self, request: Any) -> bool:
        """Whether this handler accepts ``request`` when no handler name is given."""
        return False

    def handle(self, ctx: ActionContext) -> Any:
        """Do the work; the return value (JSON) becomes the action's response."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement handle(ctx)")

    def get_concurrency_key(self, request: Any) -> str | None:
        """The key that keeps actions for ``request`` from running at the same time."""
        key = self.options.concurrency_key
        return key(request) if callable(key) else key

    def get_time_limit(self) -> float | None:
        """Seconds this handler may run before it is asked to cancel, or None."""
        return self.options.resolved_time_limit

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number ``attempt``, ended by ``exc``, gets another try."""
        retry_on = self.options.retry_on
        return bool(retry_on) and isinstance(exc, retry_on) and attempt < self.options.max_attempts

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` failed: exponential, capped."""
        return self.options.retry_delay(attempt)

    @property
    def source(self) -> str:
        """Where the handler is defined, to tell duplicates from re-imports."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FunctionHandler(ActionHandler):
    """Wraps a plain function ``func(ctx)`` registered with :func:`handler`."""

    def __init__(
        self,
        name: str,
        func: Callable[[ActionContext], Any],
        options: HandlerOptions | None = None,
        *,
        can_handle: Callable[[Any], bool] | None = None,
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.func = func
        self._can_handle = can_handle
        super().__init__(options or HandlerOptions())

    def can_handle(self, request: Any) -> bool:
        return bool(self._can_handle and self._can_handle(request))

    def handle(self, ctx: ActionContext) -> Any:
        return self.func(ctx)

    @property
    def source(self) -> str:
        return _dotted_path(self.func) or repr(self.func)


class Handle:
    """What ``@handler(...)`` returns: the registered handler, ready to start.

    Calling the handle calls the function, as before it was decorated;
    ``start(request, user=...)`` creates an action, like django-tasks' ``Task.enqueue()``.
    """

    def __init__(self, registered: ActionHandler, func: Callable[[ActionContext], Any]) -> None:
        self.handler = registered
        self.func = func
        functools.update_wrapper(self, func)

    @property
    def name(self) -> str:
        return self.handler.name

    @property
    def options(self) -> HandlerOptions:
        return self.handler.options

    def __call__(self, ctx: ActionContext) -> Any:
        return self.func(ctx)

    def start(
        self,
        request: Any = None,
        *,
        user: Any = None,
        session_key: str | None = None,
        idempotency_key: str | None = None,
        client_address: str | None = None,
    ) -> StartResult:
        """Start an action of this handler: ``service.start(self.name, request, ...)``."""
        if _starter is None:
            raise HandlerError(
                "The action service is not loaded: is 'async_actions' in INSTALLED_APPS "
                "and Django set up (django.setup())?"
            )
        return _starter(
            self.name,
            request,
            user=user,
            session_key=session_key,
            idempotency_key=idempotency_key,
            client_address=client_address,
        )

    async def astart(
        self,
        request: Any = None,
        *,
        user: Any = None,
        session_key: str | None = None,
        idempotency_key: str | None = None,
        client_address: str | None = None,
    ) -> StartResult:
        """:meth:`start` for async code, on Django's thread for sync work."""
        return await sync_to_async(self.start, thread_sensitive=True)(
            request,
            user=user,
            session_key=session_key,
            idempotency_key=idempotency_key,
            client_address=client_address,
        )

    def __repr__(self) -> str:
        return f"<Handle {self.name!r}>"


class PerformHandler(ActionHandler):
    """Runs an importable function started with ``perform()``.

    The request holds ``args`` and ``kwargs``; the name is the function's dotted path.
    Not public: the API must not become a way to call arbitrary functions.
    """

    def __init__(self, path: str, func: Callable[..., Any]) -> None:
        self.name = path  # type: ignore[misc]
        self.func = func
        super().__init__(HandlerOptions(public=False))

    def handle(self, ctx: ActionContext) -> Any:
        request = ctx.request or {}
        return self.func(*request.get("args", []), **request.get("kwargs", {}))

    @property
    def source(self) -> str:
        return self.name


def register(instance: ActionHandler) -> ActionHandler:
    """Add a handler; a second, different definition under one name is an error.

    Its options are built (and so validated) here, before it can be found.
    """
    name = instance.name
    if not isinstance(name, str) or not name.strip():
        raise HandlerError(f"{instance!r} needs a non-empty string name.")
    if len(name) > 255:
        raise HandlerError(f"Handler name {name[:40]!r}... is longer than 255 characters.")
    instance.options  # noqa: B018 -- raises HandlerError for a bad option
    with _lock:
        existing = _registry.get(name)
        if existing is not None and existing.source != instance.source:
            raise HandlerError(
                f"Two handlers are named {name!r}: {existing.source} and {instance.source}. "
                "Give one of them another name."
            )
        _registry[name] = instance
    return instance


def register_function(path: str, func: Callable[..., Any]) -> ActionHandler:
    """The handler that runs ``func`` (importable as ``path``) for ``perform()``."""
    with _lock:
        found = _registry.get(path)
        return found if found is not None else register(PerformHandler(path, func))


def unregister(name: str) -> None:
    with _lock:
        _registry.pop(name, None)


def registered_handlers() -> dict[str, ActionHandler]:
    """A copy of the registry: name to handler."""
    with _lock:
        return dict(_registry)


def handler(
    name: str,
    *,
    can_handle: Callable[[Any], bool] | None = None,
    public: bool = True,
    max_attempts: int = 1,
    concurrency_key: ConcurrencyKey = None,
    on_busy: str = "wait",
    time_limit: float | None = FROM_SETTINGS,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    retry_backoff: float | None = None,
    retry_backoff_max: float | None = None,
) -> Callable[[Callable[[ActionContext], Any]], Handle]:
    """Register ``func(ctx)`` (plain or ``async def``) as a handler called ``name``.

    The keyword arguments are the fields of :class:`HandlerOptions`, checked here.
    Returns a :class:`Handle`: call it like the function, or ``.start(request, ...)``.
    """
    if callable(name):
        raise HandlerError('Use @handler("name"), with a name, not bare @handler.')
    options = handler_options(
        name,
        lambda: HandlerOptions(
            public=public,
            max_attempts=max_attempts,
            concurrency_key=concurrency_key,
            on_busy=on_busy,
            time_limit=time_limit,
            retry_on=retry_on,  # type: ignore[arg-type]  # one class becomes a tuple
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
        ),
    )

    def decorator(func: Callable[[ActionContext], Any]) -> Handle:
        registered = register(FunctionHandler(name, func, options, can_handle=can_handle))
        return Handle(registered, func)

    return decorator


def get_handler(name: str, *, import_paths: bool = True) -> ActionHandler | None:
    """The handler called ``name``, importing a dotted path when ``import_paths`` allows.

    Only trusted callers (the executor, ``perform()``) import: a name that arrives
    from a client must already be registered.
    """
    with _lock:
        found = _registry.get(name)
    if found is not None or not import_paths or "." not in name:
        return found
    try:
        obj = import_string(name)
    except ImportError:
        return None
    with _lock:
        found = _registry.get(name)  # importing a view module may have registered it
    if found is not None:
        return found
    if inspect.isclass(obj) and hasattr(obj, "as_action_handler"):
        return register(obj.as_action_handler())
    if isinstance(obj, Handle):
        obj = obj.func
    if inspect.isfunction(obj):
        return register(PerformHandler(name, obj))
    return None


def find_handler_for(request: Any) -> ActionHandler | None:
    """The first public handler whose ``can_handle`` accepts ``request``."""
    for candidate in registered_handlers().values():
        if candidate.public and candidate.can_handle(request):
            return candidate
    return None


def _dotted_path(func: Any) -> str | None:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}.{qualname}"


def importable_path(func: Callable[..., Any]) -> str:
    """The dotted path another process can import ``func`` by, or a HandlerError."""
    if not callable(func) or not inspect.isfunction(func):
        raise HandlerError(
            f"perform() takes a module-level function, not {func!r}. "
            "Wrap methods, partials and callables in a plain function."
        )
    qualname = func.__qualname__
    if func.__name__ == "<lambda>":
        raise HandlerError("perform() cannot run a lambda: define a module-level function.")
    if "<locals>" in qualname:
        raise HandlerError(
            f"perform() cannot run the nested function {qualname!r}: "
            "a worker process could not import it. Move it to module level."
        )
    path = f"{func.__module__}.{qualname}"
    if func.__module__ == "__main__":
        raise HandlerError(
            f"perform() cannot run {path}: functions in __main__ cannot be imported by a "
            "worker. Move it to a module."
        )
    try:
        imported = import_string(path)
    except ImportError as exc:
        raise HandlerError(f"perform() cannot import {path}: {exc}") from exc
    if inspect.unwrap(imported) is not inspect.unwrap(func):
        raise HandlerError(f"{path} does not import back to the same function.")
    return path


def __getattr__(name: str) -> Any:
    """``perform`` moved to :mod:`async_actions.service`; this old import path still works.

    Looked up when asked for, since the service imports this module.
    """
    if name == "perform":
        return import_string("async_actions.service.perform")  # deprecated path
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
