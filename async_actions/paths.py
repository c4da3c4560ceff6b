"""Where the WebSocket lives: a leaf module, so what only needs the path imports no consumer.

:mod:`async_actions.routing` mounts the consumer at :data:`WEBSOCKET_ROUTE`; the
template tag writes :data:`WEBSOCKET_PATH` into the progress element. Neither side has
to import the other (the tag would otherwise load the whole WebSocket stack).
"""

from __future__ import annotations

import uuid

__all__ = ["WEBSOCKET_PATH", "WEBSOCKET_ROUTE", "websocket_path"]

#: The route pattern ``routing.websocket_urlpatterns`` mounts the consumer at.
WEBSOCKET_ROUTE = "ws/async-actions/<uuid:pk>/"

#: The path the progress element connects to; ``{id}`` is the action's UUID.
WEBSOCKET_PATH = "/ws/async-actions/{id}/"


def websocket_path(action_id: uuid.UUID | str, prefix: str = "/") -> str:
    """The WebSocket path of one action, under the site's script ``prefix`` (Django's
    ``get_script_prefix()``: ``SCRIPT_NAME``/``root_path`` or ``FORCE_SCRIPT_NAME``), as
    the page's other URLs are: a site mounted under ``/app/`` behind a proxy that only
    forwards ``/app/`` must get its socket there too."""
    return prefix.rstrip("/") + WEBSOCKET_PATH.format(id=action_id)
