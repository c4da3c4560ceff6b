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
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core import signals
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
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

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        # One hop on the loop's shared pool, as a WSGI worker thread serves a request:
        # each thread keeps its own database connection, and request_started/_finished
        # run there (close_old_connections applies CONN_MAX_AGE).
        response = await sync_to_async(self._serve, thread_sensitive=False)(scope, body_file)
        try:
            await self.send_response(response, send)
        finally:
            if response.streaming:  # closed after its body was read (not the status JSON)
                await sync_to_async(response.close, thread_sensitive=False)()
            body_file.close()

    def _serve(self, scope: dict[str, Any], body_file: Any) -> HttpResponseBase:
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
        assert response is not None
        if not response.streaming:
            response.close()  # request_finished; the content is already in memory
        return response


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
    """

    def __init__(self, app: Any) -> None:
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
        self.handler = StatusPollHandler()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.is_status_poll(scope):
            await self.handler.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @staticmethod
    def is_status_poll(scope: dict[str, Any]) -> bool:
        path = scope.get("path", "")
        if scope.get("method") != "GET" or not _STATUS_SHAPE.search(path):
            return False
        root = scope.get("root_path", "")
        path_info = path.removeprefix(root) if root and path.startswith(root) else path
        try:
            match = resolve(path_info)
        except Resolver404:
            return False
        view_class = getattr(match.func, "view_class", None)
        return isinstance(view_class, type) and issubclass(view_class, StatusPage)
