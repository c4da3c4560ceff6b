"""The demo's ASGI application plus the fan-out peer's WebSocket route (``ws/peer/<pk>/``),
so both are served by one daphne with the same settings (bench/bench_fanout.py)."""

# isort: skip_file
from example_project.asgi import django_asgi_app  # first: sets Django up

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path, re_path

from async_actions.origins import SameOriginValidator
from async_actions.routing import websocket_not_found, websocket_urlpatterns
from bench.peer_consumers import GroupConsumer

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(
            AuthMiddlewareStack(
                URLRouter(
                    [
                        *websocket_urlpatterns,
                        path("ws/peer/<uuid:pk>/", GroupConsumer.as_asgi()),
                        re_path(r"", websocket_not_found),
                    ]
                )
            )
        ),
    }
)
