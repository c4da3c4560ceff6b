"""WebSocket routes to include in the project's ASGI ``URLRouter``.

Wrap them in ``AuthMiddlewareStack`` (ownership needs the user and session) and
``async_actions.origins.SameOriginValidator`` (scheme, host and port of the origin)::

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": SameOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    })
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core import signals
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import connections
from django.http.response import HttpResponseBase
from django.urls import Resolver404, path, re_path, resolve, set_script_prefix

from async_actions.consumers import ActionConsumer
from async_actions.paths import WEBSOCKET_PATH, WEBSOCKET_ROUTE
from async_actions.views import StatusPage

__all__ = [
    "WEBSOCKET_PATH",
    "StatusPollHandler",
    "StatusPollRouter",
    "websocket_urlpatterns",
]  # WEBSOCKET_PATH: the old import path


async def websocket_not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Refuse a handshake (HTTP 403) for a path no route matches.

    Channels' ``URLRouter`` raises "No route found" for such a path: a traceback in the
    server log per handshake. Put it last in a project's routes:
    ``URLRouter([*websocket_urlpatterns, re_path(r"", websocket_not_found)])``.
    """
    while (await receive())["type"] != "websocket.connect":  # pragma: no cover
        pass
    await send({"type": "websocket.close", "code": 1000})


websocket_urlpatterns = [
    path(WEBSOCKET_ROUTE, ActionConsumer.as_asgi(), name="async_actions_ws"),
    # Any other path under the prefix (a malformed id) reaches the consumer without an id:
    # it closes with 4404 like an unknown action, instead of "No route found".
    re_path(r"^ws/async-actions/", ActionConsumer.as_asgi()),
]


#: A path whose last two segments are ``status/<uuid>/``: the only shape a status page
#: has (``views.ACTION_PAGES``), whatever prefix the site mounts the views under. Cheap
#: to test before the URL resolver confirms it.
_STATUS_SHAPE = re.compile(r"/status/[0-9a-fA-F-]{32,36}/\Z")


class StatusPollHandler(ASGIHandler):
    """Django's own request path for the status JSON, in one thread hop instead of ~15.

    Django's ASGI handler runs each sync middleware's hooks and the sync view through
    their own ``sync_to_async`` hop (two per ``MiddlewareMixin`` middleware, plus the
    signals and ``response.close()``). This handler builds the same ``ASGIRequest`` and
    runs the same middleware chain (``MIDDLEWARE``, loaded in sync mode, as under WSGI)
    and the same view, with the ``request_started``/``request_finished`` signals, all in
    one call on a pooled thread, then sends the response from the event loop. Nothing of
    the site is skipped; the answer is the one the plain handler gives.
    """

    def __init__(self, *, threads: int = 4, conn_max_age: float | None = None) -> None:
        super().__init__()
        #: Its own bounded pool, as a WSGI server's threads: each thread holds at most
        #: one database connection per alias, so ``threads`` bounds them.
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="async-actions-poll")
        self.threads = threads
        self.conn_max_age = conn_max_age

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        # One hop, as a WSGI worker thread serves a request: request_started/_finished
        # run on that thread (close_old_connections applies CONN_MAX_AGE there).
        serve = sync_to_async(self._serve, thread_sensitive=False, executor=self.executor)
        response = await serve(scope, body_file)
        try:
            await self.send_response(response, send)
        finally:
            if response.streaming:  # closed after its body was read (not the status JSON)
                await sync_to_async(response.close, thread_sensitive=False)()
            body_file.close()

    def _serve(self, scope: dict[str, Any], body_file: Any) -> HttpResponseBase:
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        opened = {conn.alias for conn in connections.all(initialized_only=True) if conn.connection}
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
        assert response is not None
        self._keep_new_connections(opened)
        if not response.streaming:
            response.close()  # request_finished; the content is already in memory
        return response

    def _keep_new_connections(self, opened_before: set[str]) -> None:
        """Give connections this request opened ``conn_max_age`` seconds of life.

        Django keeps a connection for ``CONN_MAX_AGE`` (``close_at``, checked by
        ``close_old_connections`` at the start and end of each request); 0, the usual
        setting under ASGI, where each request has a new thread, closes it after every
        request. This pool's threads live on, so a connection can serve their next
        polls; broken ones are still closed (``close_if_unusable_or_obsolete``).
        """
        if self.conn_max_age is None:
            return
        until = time.monotonic() + self.conn_max_age
        for conn in connections.all(initialized_only=True):
            if conn.connection is None or conn.alias in opened_before:
                continue
            if conn.close_at is not None and conn.close_at < until:
                conn.close_at = until

    def close_connections(self) -> None:
        """Close the pool threads' database connections (tests, shutdown)."""
        threads = self.threads  # one call per thread: each waits until all threads ran one
        barrier = threading.Barrier(threads)

        def close() -> None:
            connections.close_all()
            barrier.wait(timeout=10)  # hold this thread, so the others take the rest

        for future in [self.executor.submit(close) for _ in range(threads)]:
            future.result()


class StatusPollRouter:
    """ASGI app: status polls through :class:`StatusPollHandler`, the rest to ``app``.

    Opt-in HTTP wrapper for a project's ``asgi.py``::

        "http": StatusPollRouter(django_asgi_app),

    A request goes the one-hop way only if it is a ``GET`` whose path the site's root
    URLconf resolves to a status page (:class:`async_actions.views.StatusPage`, wherever
    the site mounted the views); everything else, ``HEAD`` included, goes to ``app``
    unchanged. Either way Django's whole middleware chain and the view answer it. ``app``
    must be Django's own ASGI handler (optionally in ``ASGIStaticFilesHandler``): an ASGI
    middleware in between would be skipped for status polls, so it is refused.

    ``threads`` bounds the pool the polls run on. ``conn_max_age`` (seconds; None: the
    site's ``CONN_MAX_AGE``) lets a connection a poll opened serve that thread's next
    polls for that long, as ``CONN_MAX_AGE`` does under WSGI.

    ``api=True`` sends the actions API's requests the same way, whatever their method (a
    start's ``POST``, an API client's poll of ``GET …/actions/<id>/``, a cancel): any
    path the root URLconf resolves to a view set that says ``one_hop = True``
    (:class:`async_actions.api.views.ActionViewSet` does).
    """

    def __init__(
        self,
        app: Any,
        *,
        threads: int = 4,
        conn_max_age: float | None = None,
        api: bool = False,
    ) -> None:
        inner = app.application if isinstance(app, ASGIStaticFilesHandler) else app
        if not isinstance(inner, ASGIHandler):
            # Whatever ASGI middleware sits between this router and Django would not see
            # the status polls: refuse, rather than skip a site's check silently.
            raise ImproperlyConfigured(
                "StatusPollRouter must wrap Django's ASGI application (get_asgi_application(),"
                f" optionally in ASGIStaticFilesHandler), not {type(app).__qualname__}; put"
                " other ASGI middleware outside it."
            )
        self.app = app
        self.api = api
        self.handler = StatusPollHandler(threads=threads, conn_max_age=conn_max_age)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (
            self.is_status_poll(scope) or (self.api and self.is_api_request(scope))
        ):
            await self.handler.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    def is_status_poll(scope: dict[str, Any]) -> bool:
        if scope.get("method") != "GET" or not _STATUS_SHAPE.search(scope.get("path", "")):
            return False
        view_class = _view_class(scope)
        return isinstance(view_class, type) and issubclass(view_class, StatusPage)

    @staticmethod
    def is_api_request(scope: dict[str, Any]) -> bool:
        """Whether the path resolves to a view set marked ``one_hop`` (the actions API)."""
        return bool(getattr(_view_class(scope), "one_hop", False))


def _view_class(scope: dict[str, Any]) -> Any:
    """The class behind the view the site's root URLconf resolves the path to: a class
    view's ``view_class``, a DRF view set's ``cls``; None for none."""
    # The path_info Django's ASGIRequest derives (root_path or FORCE_SCRIPT_NAME).
    path_info = scope.get("path", "").removeprefix(get_script_prefix(scope))
    try:
        match = resolve(path_info)
    except Resolver404:
        return None
    return getattr(match.func, "view_class", None) or getattr(match.func, "cls", None)
