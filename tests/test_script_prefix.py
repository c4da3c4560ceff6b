"""A site mounted under a URL prefix (``SCRIPT_NAME`` from the server, or
``FORCE_SCRIPT_NAME``): every URL the page gives its script lives under the prefix,
the WebSocket's too, and the socket's route answers there (a proxy that forwards only
``/app/`` would otherwise leave the page polling)."""

from __future__ import annotations

import re

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from django.urls import reverse

from async_actions.models import Action
from tests.helpers import TIMEOUT, make_action, new_session


def element_urls(html: str) -> dict[str, str]:
    tag = re.search(r"<async-action-progress [^>]*>", html).group(0)
    return dict(re.findall(r'data-(ws-path|status-url|cancel-url|result-url)="([^"]*)"', tag))


async def processing_page(root_path: str = "") -> tuple[Action, dict[str, str]]:
    """The owner's processing page as the ASGI handler serves it (the test client sets
    no script prefix): the server's ``root_path``, or ``FORCE_SCRIPT_NAME``."""
    from example_project.asgi import application

    session = await new_session()
    action = await make_action(session)
    path = reverse("gate_view:processing", kwargs={"pk": action.pk})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"cookie", f"sessionid={session}".encode())],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }
    talk = ApplicationCommunicator(application, scope)
    await talk.send_input({"type": "http.request", "body": b""})
    start = await talk.receive_output(TIMEOUT)
    assert start["status"] == 200, start
    body = b""
    while True:
        message = await talk.receive_output(TIMEOUT)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return action, element_urls(body.decode())


pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_element_s_urls_follow_the_servers_root_path() -> None:
    action, urls = await processing_page("/app")
    assert urls["ws-path"] == f"/app/ws/async-actions/{action.pk}/"
    assert all(url.startswith("/app/") for url in urls.values() if url), urls


async def test_the_element_s_urls_follow_force_script_name() -> None:
    with override_settings(FORCE_SCRIPT_NAME="/mounted/"):
        action, urls = await processing_page()
    assert urls["ws-path"] == f"/mounted/ws/async-actions/{action.pk}/"
    assert all(url.startswith("/mounted/") for url in urls.values() if url), urls


async def test_without_a_prefix_the_socket_stays_at_the_root() -> None:
    action, urls = await processing_page()
    assert urls["ws-path"] == f"/ws/async-actions/{action.pk}/"


async def test_the_socket_answers_under_the_servers_root_path() -> None:
    """What a server started with ``--root-path /app`` (daphne, uvicorn) passes on: the
    full path and the prefix; the router strips it and the owner's socket connects."""
    from example_project.asgi import application

    session = await new_session()
    action = await make_action(session)
    socket = WebsocketCommunicator(
        application,
        f"/app/ws/async-actions/{action.pk}/",
        headers=[
            (b"origin", b"http://testserver"),
            (b"host", b"testserver"),
            (b"cookie", f"sessionid={session}".encode()),
        ],
    )
    socket.scope["root_path"] = "/app"
    connected, _code = await socket.connect(timeout=TIMEOUT)
    assert connected
    first = await socket.receive_json_from(timeout=TIMEOUT)
    assert first["action"]["id"] == str(action.pk)
    await socket.disconnect()
