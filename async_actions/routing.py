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

from typing import Any

from django.urls import path, re_path

from async_actions.consumers import ActionConsumer
from async_actions.paths import WEBSOCKET_PATH, WEBSOCKET_ROUTE

__all__ = ["WEBSOCKET_PATH", "websocket_urlpatterns"]  # WEBSOCKET_PATH: the old import path


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
