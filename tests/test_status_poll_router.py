"""``StatusPollRouter`` answers a status poll exactly as Django's ASGI handler does.

Differential: the same raw ASGI request goes to the plain handler and to the router (which
serves it through :class:`~async_actions.routing.StatusPollHandler`, one thread hop), and
status, every header and the body must match, for owners, strangers, staff with and
without the permission, forged and missing sessions, fresh and stale ETags.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth import get_user_model
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.db.backends.signals import connection_created
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_actions.routing import StatusPollHandler, StatusPollRouter
from tests.test_status_etag import _anonymous_owner, _running, _url, _user

pytestmark = pytest.mark.django_db(transaction=True)

Response = tuple[int, list[tuple[bytes, bytes]], bytes]


def _scope(path: str, headers: dict[str, str], method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def _call(app: Any, scope: dict[str, Any]) -> Response:
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(10)
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"], sorted(start["headers"]), body


def _both(path: str, headers: dict[str, str], method: str = "GET") -> tuple[Response, Response]:
    async def run() -> tuple[Response, Response]:
        plain = await _call(ASGIHandler(), _scope(path, headers, method))
        routed = await _call(StatusPollRouter(ASGIHandler()), _scope(path, headers, method))
        return plain, routed

    return asyncio.run(run())


def _cookie(client: Client) -> dict[str, str]:
    morsel = client.cookies.get("sessionid")
    return {"Cookie": f"sessionid={morsel.value}"} if morsel is not None else {}


def _logged_in(name: str, *permissions: str, **extra: Any) -> Client:
    client = Client()
    client.force_login(_user(name, *permissions, **extra))
    return client


def test_the_router_takes_only_get_of_a_status_page_wherever_it_is_mounted() -> None:
    action = _running()
    status = _url(action)
    assert status.startswith("/t/echo/")  # tests/urls.py mounts the views under a prefix
    assert StatusPollRouter.is_status_poll(_scope(status, {}))
    assert StatusPollRouter.is_status_poll(_scope(f"/demo{status}", {}) | {"root_path": "/demo"})
    for scope in (
        _scope(status, {}, method="HEAD"),
        _scope(status, {}, method="POST"),
        _scope(status.replace("/status/", "/result/"), {}),
        _scope(f"/nowhere/status/{action.pk}/", {}),
        _scope(f"/demo{status}", {}),  # without its root_path it is not the site's URL
    ):
        assert not StatusPollRouter.is_status_poll(scope), scope


def test_owner_stranger_staff_and_forged_sessions_get_the_same_answers() -> None:
    owner_client, key = _anonymous_owner()
    anonymous_action = _running(session_key=key)
    owner_user = _user("owner")
    owner = Client()
    owner.force_login(owner_user)
    user_action = _running(user=owner_user)
    visitors = {
        "anonymous owner": _cookie(owner_client),
        "user owner": _cookie(owner),
        "another user": _cookie(_logged_in("stranger")),
        "staff without permission": _cookie(_logged_in("staff", is_staff=True)),
        "staff who may view": _cookie(_logged_in("viewer", "view_action", is_staff=True)),
        "superuser": _cookie(_logged_in("root", is_staff=True, is_superuser=True)),
        "forged session": {"Cookie": "sessionid=forgedkeythattheserverneverissued1"},
        "no cookie": {},
    }
    answers: dict[tuple[str, str], int] = {}
    for action in (anonymous_action, user_action):
        for name, headers in visitors.items():
            plain, routed = _both(_url(action), headers)
            assert routed == plain, name
            answers[(name, str(action.user_id))] = plain[0]
            if plain[0] == 200:  # and the conditional GET with the ETag just served
                etag = dict(plain[1])[b"ETag"].decode()
                plain, routed = _both(_url(action), {**headers, "If-None-Match": etag})
                assert routed == plain, name
                assert plain[0] == 304 and plain[2] == b""
    # The differential would be empty if every answer were the same: they are not.
    assert answers[("anonymous owner", "None")] == 200
    assert answers[("another user", str(user_action.user_id))] == 404
    assert answers[("staff who may view", "None")] == 200
    assert answers[("forged session", "None")] == 404
    headers = dict(_both(_url(anonymous_action), visitors["anonymous owner"])[1][1])
    assert headers[b"X-Content-Type-Options"] == b"nosniff"  # SecurityMiddleware ran
    assert headers[b"X-Frame-Options"] == b"DENY"  # and XFrameOptionsMiddleware
    assert b"Set-Cookie" not in headers  # no session write


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    visitor=st.sampled_from(["owner", "stranger", "viewer", "forged", "none"]),
    validator=st.sampled_from(["none", "fresh", "stale", "garbage", "star"]),
    language=st.sampled_from(["", "de", "ru;q=0.8, de;q=0.5", "xx"]),
    pk_kind=st.sampled_from(["own", "missing"]),
)
def test_any_poll_is_answered_identically(
    visitor: str, validator: str, language: str, pk_kind: str
) -> None:
    owner_client, key = _anonymous_owner()
    action = _running(session_key=key)
    cookies = {
        "owner": _cookie(owner_client),
        "stranger": _cookie(_anonymous_owner()[0]),
        "viewer": _cookie(Client()),
        "forged": {"Cookie": "sessionid=forgedkeythattheserverneverissued1"},
        "none": {},
    }
    if visitor == "viewer":
        viewer = Client()
        root, _ = get_user_model().objects.get_or_create(
            username="root", is_staff=True, is_superuser=True
        )
        viewer.force_login(root)
        cookies["viewer"] = _cookie(viewer)
    headers = dict(cookies[visitor])
    url = _url(action) if pk_kind == "own" else _url(uuid.uuid4())
    etag = Client(headers=headers).get(url).headers.get("ETag", 'W/"x"')
    headers["If-None-Match"] = {
        "none": "",
        "fresh": etag,
        "stale": 'W/"0-0"',
        "garbage": "\x01not an etag",
        "star": "*",
    }[validator]
    if not headers["If-None-Match"]:
        del headers["If-None-Match"]
    if language:
        headers["Accept-Language"] = language
    plain, routed = _both(url, headers)
    assert routed == plain


def test_the_handler_runs_the_whole_middleware_chain_in_sync_mode() -> None:
    handler = StatusPollHandler()
    assert handler._middleware_chain is not None
    assert not asyncio.iscoroutinefunction(handler._middleware_chain)


def test_the_router_refuses_to_skip_an_asgi_middleware_around_django() -> None:
    async def site_check(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        await ASGIHandler()(scope, receive, send)

    with pytest.raises(ImproperlyConfigured, match="must wrap Django's ASGI application"):
        StatusPollRouter(site_check)
    StatusPollRouter(ASGIStaticFilesHandler(ASGIHandler()))  # static files around it: fine


@pytest.mark.parametrize(("conn_max_age", "opened"), [(None, 3), (60, 1)])
def test_conn_max_age_lets_a_poll_thread_keep_its_connection(
    conn_max_age: float | None, opened: int
) -> None:
    """Under CONN_MAX_AGE = 0 every poll opens a connection; with conn_max_age, one does."""
    owner_client, key = _anonymous_owner()
    url = _url(_running(session_key=key))
    router = StatusPollRouter(ASGIHandler(), threads=1, conn_max_age=conn_max_age)
    created: list[Any] = []

    def count(sender: Any, connection: Any, **kwargs: Any) -> None:
        created.append(connection)

    connection_created.connect(count)
    try:

        async def polls() -> list[int]:
            return [(await _call(router, _scope(url, _cookie(owner_client))))[0] for _ in range(3)]

        assert asyncio.run(polls()) == [200, 200, 200]
    finally:
        connection_created.disconnect(count)
        router.handler.close_connections()
    assert len(created) == opened
