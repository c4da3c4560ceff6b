"""SameOriginValidator: the WebSocket origin rules are Django's CSRF origin rules."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.middleware.csrf import CsrfViewMiddleware
from django.test import RequestFactory

from async_actions.origins import SameOriginValidator

TRUSTED = ["https://app.trusted.test", "https://*.example.test", "http://*.ports.test:8443"]


class Accepting(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()


def handshake(origin: str | None, host: str, scheme: str, extra: Any = ()) -> bool:
    headers = [(b"host", host.encode()), *extra]
    if origin is not None:
        headers.append((b"origin", origin.encode()))

    async def connect() -> bool:
        ws = WebsocketCommunicator(SameOriginValidator(Accepting.as_asgi()), "/", headers=headers)
        ws.scope["scheme"] = scheme
        connected, _ = await ws.connect(timeout=5)
        await ws.disconnect()
        return connected

    return async_to_sync(connect)()


def django_csrf_accepts(origin: str, host: str, scheme: str) -> bool:
    """What Django's own CSRF origin check says of the same request."""
    request = RequestFactory().get(
        "/", HTTP_HOST=host, HTTP_ORIGIN=origin, secure=scheme in ("wss", "https")
    )
    return CsrfViewMiddleware(lambda request: None)._origin_verified(request)


CASES = [
    # origin, Host header, connection scheme, accepted
    ("http://testserver", "testserver", "ws", True),
    ("https://testserver", "testserver", "ws", False),  # wrong scheme
    ("http://testserver:8000", "testserver", "ws", False),  # wrong port
    ("http://evil.test", "testserver", "ws", False),  # wrong host
    ("http://localhost", "testserver", "ws", False),  # another allowed host is not this site
    ("http://testserver:8000", "testserver:8000", "ws", True),
    ("http://testserver", "testserver:8000", "ws", False),
    ("https://testserver", "testserver", "wss", True),
    ("http://testserver", "testserver", "wss", False),  # a secure socket from a plain page
    ("http://evil.test", "evil.test", "ws", False),  # a Host outside ALLOWED_HOSTS
    ("https://app.trusted.test", "testserver", "wss", True),  # trusted, exact
    ("http://app.trusted.test", "testserver", "ws", False),
    ("https://app.trusted.test:8443", "testserver", "wss", False),
    ("https://a.example.test", "testserver", "wss", True),  # trusted, wildcard
    ("https://a.b.example.test", "testserver", "wss", True),
    ("https://example.test", "testserver", "wss", True),
    ("https://badexample.test", "testserver", "wss", False),
    ("http://a.example.test", "testserver", "wss", False),
    ("https://a.example.test:444", "testserver", "wss", False),
    ("http://a.ports.test:8443", "testserver", "ws", True),
    ("http://a.ports.test", "testserver", "ws", False),
    ("null", "testserver", "ws", False),  # sandboxed frames, file: pages
]


@pytest.mark.parametrize(("origin", "host", "scheme", "accepted"), CASES)
def test_an_origin_is_accepted_as_djangos_csrf_check_would_accept_it(
    settings: Any, origin: str, host: str, scheme: str, accepted: bool
) -> None:
    """Fails on df31ab2's AllowedHostsOriginValidator for the wrong scheme, port and host."""
    settings.CSRF_TRUSTED_ORIGINS = TRUSTED
    assert handshake(origin, host, scheme) is accepted
    assert django_csrf_accepts(origin, host, scheme) is accepted


def test_a_default_port_written_out_is_the_same_origin(settings: Any) -> None:
    assert handshake("http://testserver:80", "testserver", "ws") is True
    assert handshake("https://testserver:443", "testserver", "wss") is True


def test_a_handshake_without_an_origin_header_is_refused() -> None:
    assert handshake(None, "testserver", "ws") is False


def test_the_secure_proxy_header_makes_the_sites_origin_https(settings: Any) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = [(b"x-forwarded-proto", b"https")]
    assert handshake("https://testserver", "testserver", "ws", proxied) is True
    assert handshake("http://testserver", "testserver", "ws", proxied) is False


def test_a_refused_origin_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="async_actions"):
        assert handshake("http://evil.test", "testserver", "ws") is False
    assert "http://evil.test" in caplog.text
    assert "http://testserver" in caplog.text
