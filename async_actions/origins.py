"""A WebSocket origin check as strict as Django's CSRF origin check.

Channels' ``AllowedHostsOriginValidator`` compares host names only, so a page served
over plain HTTP, or on another port of an allowed host, may open a socket. This
validator accepts a handshake only when the ``Origin`` header names the site itself
(scheme, host and port, as Django's CSRF check builds it from the request) or an
origin in ``settings.CSRF_TRUSTED_ORIGINS`` (``https://*.example.com`` trusts every
subdomain). A handshake without an ``Origin`` header is refused, as Channels does: every
browser sends one. The matching itself is Channels' ``OriginValidator``.
"""

from __future__ import annotations

import io
import logging
from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest

__all__ = ["SameOriginValidator", "allowed_origins"]

logger = logging.getLogger("async_actions")


def allowed_origins(scope: dict[str, Any]) -> list[str]:
    """The origins that may open a WebSocket on this connection, as Channels patterns.

    The site's own origin comes from the connection as Django sees a request: the
    scheme (``wss`` is ``https``; ``SECURE_PROXY_SSL_HEADER`` honoured) and
    ``request.get_host()`` (``ALLOWED_HOSTS``, ``USE_X_FORWARDED_HOST``/``_PORT``). A host
    outside ``ALLOWED_HOSTS`` gives no own origin; trusted origins still count.
    """
    http_scope = {
        **scope,
        "type": "http",
        "method": "GET",
        "scheme": "https" if scope.get("scheme") in ("wss", "https") else "http",
    }
    request = ASGIRequest(http_scope, io.BytesIO())
    patterns = []
    try:
        host = request.get_host()
    except DisallowedHost:
        pass
    else:
        patterns.append(f"{'https' if request.is_secure() else 'http'}://{host}")
    # Django writes a wildcard as "https://*.example.com"; Channels as "https://.example.com".
    # An entry without a scheme (Django's check 4_0.E001) would match any scheme: skipped.
    patterns.extend(
        origin.replace("://*.", "://.", 1)
        for origin in settings.CSRF_TRUSTED_ORIGINS
        if "://" in origin
    )
    return patterns


class SameOriginValidator:
    """ASGI middleware: refuse (HTTP 403) WebSocket handshakes from other origins.

    Use it where Channels' ``AllowedHostsOriginValidator`` would go::

        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        validator = _LoggingOriginValidator(self.application, allowed_origins(scope))
        return await validator(scope, receive, send)


class _LoggingOriginValidator(OriginValidator):  # type: ignore[misc]
    """Channels' validator for one connection's origins; says why it refused."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        valid: bool = super().valid_origin(parsed_origin)
        if not valid:
            logger.warning(
                "WebSocket handshake refused: Origin %s is not one of %s",
                parsed_origin.geturl() if parsed_origin is not None else "(none)",
                ", ".join(self.allowed_origins) or "(no allowed origin)",
            )
        return valid
