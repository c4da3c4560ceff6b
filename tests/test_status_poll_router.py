"""``StatusPollRouter`` answers a status poll exactly as Django's ASGI handler does.

Differential: the same raw ASGI request goes to the plain handler and to the router (which
serves it through :class:`~async_actions.routing.StatusPollHandler`, one thread hop), and
status, every header and the body must match, for owners, strangers, staff with and
without the permission, forged and missing sessions, fresh and stale ETags.
"""

from __future__ import annotations

import asyncio
import json
import re
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
from rest_framework.authtoken.models import Token

from async_actions.models import Action
from async_actions.routing import StatusPollHandler, StatusPollRouter
from tests import actions as _actions  # noqa: F401  (registers tests.echo)
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


async def _call(app: Any, scope: dict[str, Any], body: bytes = b"") -> Response:
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(10)
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"], sorted(start["headers"]), body


def _both(
    path: str, headers: dict[str, str], method: str = "GET", body: bytes = b"", api: bool = False
) -> tuple[Response, Response]:
    async def run() -> tuple[Response, Response]:
        plain = await _call(ASGIHandler(), _scope(path, headers, method), body)
        router = StatusPollRouter(ASGIHandler(), api=api)
        routed = await _call(router, _scope(path, headers, method), body)
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


def test_api_requests_are_those_the_actions_view_set_answers() -> None:
    action = _running()
    for path, method in [
        ("/api/actions/", "POST"),
        ("/api/actions/", "GET"),
        (f"/api/actions/{action.pk}/", "GET"),
        (f"/api/actions/{action.pk}/cancel/", "POST"),
        (f"/api/actions/{action.pk}/log/", "GET"),
    ]:
        scope = _scope(path, {}, method)
        assert StatusPollRouter.is_api_request(scope), path
        assert not StatusPollRouter.is_status_poll(scope), path
    for path in ("/api/schema/", "/api/", "/", _url(action), "/nowhere/"):
        assert not StatusPollRouter.is_api_request(_scope(path, {})), path


def _same_but_ids(plain: Response, routed: Response) -> None:
    """Two answers that may differ only in the ids and times of the actions each created."""

    def normal(response: Response) -> tuple[int, list[tuple[bytes, bytes]], Any]:
        status, headers, body = response
        text = body.decode()
        ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text))
        ids |= {
            match
            for _name, value in headers
            for match in re.findall(r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}", value.decode())
        }
        for pk in ids:
            text = text.replace(pk, "ID")
        data = json.loads(text) if text else None
        if isinstance(data, dict):
            for name in ("created_at", "expires_at", "run_after"):
                data.pop(name, None)
        headers = [(k, v) for k, v in headers if k != b"Content-Length"]
        for pk in ids:
            headers = [(k, v.replace(pk.encode(), b"ID")) for k, v in headers]
        return status, headers, data

    assert normal(routed) == normal(plain)


def test_api_answers_through_the_router_as_through_django() -> None:
    owner = _user("api-owner")
    token = Token.objects.create(user=owner).key
    mine = _running(user=owner)
    theirs = _running(user=_user("api-stranger"))
    session = _cookie(_logged_in("api-session"))
    json_type = {"Content-Type": "application/json"}
    by_token = {"Authorization": f"Token {token}", **json_type}
    # Pending for a day: the start's answer is the same whenever the runner gets to it.
    start = json.dumps(
        {"handler": "tests.echo", "request": {"x": 1}, "run_after": "2999-01-01T00:00:00Z"}
    ).encode()
    answers = {}
    for name, path, method, headers, body in [
        ("retrieve", f"/api/actions/{mine.pk}/", "GET", by_token, b""),
        ("someone else's", f"/api/actions/{theirs.pk}/", "GET", by_token, b""),
        ("no credentials", f"/api/actions/{mine.pk}/", "GET", {}, b""),
        ("wrong token", f"/api/actions/{mine.pk}/", "GET", {"Authorization": "Token x"}, b""),
        ("list", "/api/actions/?status=running", "GET", by_token, b""),
        ("start", "/api/actions/", "POST", by_token, start),
        ("bad start", "/api/actions/", "POST", by_token, b'{"handler": "no.such"}'),
        ("session start without CSRF", "/api/actions/", "POST", {**session, **json_type}, start),
        ("cancel of someone else's", f"/api/actions/{theirs.pk}/cancel/", "POST", by_token, b""),
    ]:
        path, _, query = path.partition("?")
        sized = {**headers, "Content-Length": str(len(body))} if body else headers
        scope = _scope(path, sized, method) | {"query_string": query.encode()}

        async def run(scope: dict[str, Any] = scope, body: bytes = body) -> tuple[Any, Any]:
            plain = await _call(ASGIHandler(), scope, body)
            routed = await _call(StatusPollRouter(ASGIHandler(), api=True), scope, body)
            return plain, routed

        plain, routed = asyncio.run(run())
        _same_but_ids(plain, routed)
        answers[name] = plain[0]
    assert answers == {
        "retrieve": 200,
        "someone else's": 404,
        "no credentials": 401,
        "wrong token": 401,
        "list": 200,
        "start": 201,
        "bad start": 400,
        "session start without CSRF": 403,
        "cancel of someone else's": 404,
    }
    assert Action.objects.filter(user=owner, handler="tests.echo").count() == 2
