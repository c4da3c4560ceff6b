"""Ownership on every surface: one matrix of visitor x surface for a user's and an
anonymous session's action. Only the owner and staff see an action; everyone else gets
what a missing action gets (404, a 4404 close), and the admin is staff-only.

Also: every POST in the URLconf refuses a request without a CSRF token, and a WebSocket
from a foreign origin is refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from async_actions.models import Action
from example_project.asgi import application
from tests.views import GateView

pytestmark = pytest.mark.django_db(transaction=True)

VISITORS = ["alice", "bob", "session-1", "session-2", "staff"]
OWNERS = ["alice", "session-1"]
SURFACES = [
    "processing page",
    "result page",
    "status JSON",
    "cancel",
    "API retrieve",
    "API cancel",
    "API log",
    "API list",
    "WebSocket",
    "admin change page",
]


class Visitor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.client = Client()  # Django's test client skips CSRF; tested on its own below
        self.user = None
        if name in ("alice", "bob", "staff"):
            self.user = get_user_model().objects.create_user(
                name, password="pw", is_staff=name == "staff", is_superuser=name == "staff"
            )
            self.client.force_login(self.user)
            self.session_key = self.client.session.session_key
        else:
            store = SessionStore()
            store["visited"] = True
            store.save()
            self.session_key = store.session_key
            self.client.cookies["sessionid"] = self.session_key

    @property
    def anonymous(self) -> bool:
        return self.user is None


def _action(owner: Visitor) -> Action:
    return Action.objects.create(
        handler=GateView.handler_name(),
        status="running",
        percent=10,
        user=owner.user,
        session_key="" if owner.user else owner.session_key,
    )


def _ws_outcome(visitor: Visitor, pk: Any) -> str:
    async def connect() -> str:
        ws = WebsocketCommunicator(
            application,
            f"/ws/async-actions/{pk}/",
            headers=[
                (b"origin", b"http://testserver"),
                (b"host", b"testserver"),
                (b"cookie", f"sessionid={visitor.session_key}".encode()),
            ],
        )
        connected, _ = await ws.connect(timeout=10)
        assert connected
        message = await ws.receive_output(timeout=10)
        await ws.disconnect()
        if message["type"] == "websocket.close":
            return f"close {message.get('code')}"
        return "snapshot" if json.loads(message["text"])["action"]["id"] == str(pk) else "?"

    return async_to_sync(connect)()


def _outcome(surface: str, visitor: Visitor, pk: Any) -> str:
    c = visitor.client
    page = lambda name: reverse(f"gate_view:{name}", kwargs={"pk": pk})  # noqa: E731
    if surface == "processing page":
        return str(c.get(page("processing")).status_code)
    if surface == "result page":
        return str(c.get(page("result")).status_code)
    if surface == "status JSON":
        return str(c.get(page("status")).status_code)
    if surface == "cancel":
        return str(c.post(page("cancel"), HTTP_ACCEPT="application/json").status_code)
    if surface == "API retrieve":
        return str(c.get(f"/api/actions/{pk}/").status_code)
    if surface == "API cancel":
        return str(c.post(f"/api/actions/{pk}/cancel/").status_code)
    if surface == "API log":
        return str(c.get(f"/api/actions/{pk}/log/").status_code)
    if surface == "API list":
        response = c.get("/api/actions/")
        if response.status_code != 200:
            return str(response.status_code)
        return "listed" if str(pk) in {a["id"] for a in response.json()["results"]} else "absent"
    if surface == "WebSocket":
        return _ws_outcome(visitor, pk)
    if surface == "admin change page":
        response = c.get(f"/admin/async_actions/action/{pk}/change/")
        return str(response.status_code)
    raise AssertionError(surface)


def _expected(surface: str, visitor: Visitor, sees: bool) -> str:
    if surface.startswith("API") and visitor.anonymous:
        return "401"  # the API is for authenticated clients, owners included
    if surface == "admin change page":
        return "200" if visitor.name == "staff" else "302"  # to the admin login
    if surface == "WebSocket":
        return "snapshot" if sees else "close 4404"
    if surface == "API list":
        return "listed" if sees else "absent"
    if not sees:
        return "404"
    return {
        "processing page": "200",
        "result page": "302",  # a running action's result page sends to processing
        "status JSON": "200",
        "cancel": "202",
        "API retrieve": "200",
        "API cancel": "202",
        "API log": "200",
    }[surface]


@pytest.mark.parametrize("owner_name", OWNERS)
def test_only_the_owner_and_staff_see_an_action_on_every_surface(owner_name: str) -> None:
    visitors = {name: Visitor(name) for name in VISITORS}
    owner = visitors[owner_name]
    wrong = []
    cells = 0
    for surface in SURFACES:
        for visitor in visitors.values():
            pk = _action(owner).pk  # a fresh one: cancel changes what it touches
            sees = visitor is owner or visitor.name == "staff"
            got, want = _outcome(surface, visitor, pk), _expected(surface, visitor, sees)
            cells += 1
            if got != want:
                wrong.append(f"{surface} / {visitor.name}: got {got}, want {want}")
    assert cells == len(SURFACES) * len(VISITORS)
    assert not wrong, "\n".join(wrong)


def _all_routes() -> list[tuple[str, Any]]:
    """Every URL pattern of the project as (route, callback), includes flattened."""
    found: list[tuple[str, Any]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                found.append((prefix + str(pattern.pattern), pattern.callback))

    walk(get_resolver().url_patterns, "")
    return found


def test_every_post_of_ours_refuses_a_request_without_a_csrf_token() -> None:
    """Each URL of async_actions, the API and the demo: POST without a token is 403."""
    user = get_user_model().objects.create_user("csrf", password="pw", is_staff=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    action = Action.objects.create(handler=GateView.handler_name(), status="running", user=user)
    checked = []
    for route, callback in _all_routes():
        module = getattr(callback, "__module__", "") or ""
        view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
        owner_module = getattr(view_class, "__module__", module)
        ours = owner_module.startswith(("async_actions", "example_project", "tests"))
        if not ours:
            continue
        route = re.sub(r"\(\?P<pk>[^)]*\)", str(action.pk), route)
        route = route.replace("<uuid:pk>", str(action.pk)).replace("<pk>", str(action.pk))
        url = "/" + route.replace("^", "").replace("$", "").replace("\\Z", "")
        if "<" in url or "(" in url or "\\" in url:
            continue  # other parameters (format suffixes, admin internals)
        response = client.post(url, json.dumps({"handler": "tests.echo"}), "application/json")
        if response.status_code == 405:
            continue  # no POST here at all
        checked.append(url)
        assert response.status_code == 403, f"POST {url} answered {response.status_code}"
    assert len(checked) >= 10, checked
    assert Action.objects.count() == 1  # nothing was started
    assert Action.objects.get().status == "running"  # nothing was cancelled


def test_a_websocket_from_a_foreign_origin_is_refused() -> None:
    user = get_user_model().objects.create_user("origin", password="pw")
    store = SessionStore()
    store["_auth_user_id"] = str(user.pk)
    store["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    store["_auth_user_hash"] = user.get_session_auth_hash()
    store.save()
    action = Action.objects.create(handler=GateView.handler_name(), user=user)

    async def connect(origin: bytes) -> bool:
        ws = WebsocketCommunicator(
            application,
            f"/ws/async-actions/{action.pk}/",
            headers=[
                (b"origin", origin),
                (b"host", b"testserver"),
                (b"cookie", f"sessionid={store.session_key}".encode()),
            ],
        )
        connected, _ = await ws.connect(timeout=10)
        await ws.disconnect()
        return connected

    assert async_to_sync(connect)(b"http://testserver") is True
    assert async_to_sync(connect)(b"http://evil.example") is False
