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

from django.urls import path

from async_actions.consumers import ActionConsumer

#: The path the progress element connects to; ``{id}`` is the action's UUID.
WEBSOCKET_PATH = "/ws/async-actions/{id}/"

websocket_urlpatterns = [
    path("ws/async-actions/<uuid:pk>/", ActionConsumer.as_asgi(), name="async_actions_ws"),
]
