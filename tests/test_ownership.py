"""Ownership on every surface: one matrix of visitor x surface for a user's, an
anonymous session's and a permissionless staff member's action. The owner sees and
controls their own; ``view_action`` sees all, ``change_action`` also controls all
(superusers have both); ``is_staff`` alone adds nothing. Who may not see an action gets
what a missing action gets (404, a 4404 close); who may see but not control it gets 403
(a ``forbidden`` answer on the WebSocket). The admin is for staff with permissions.

Sessions: only a session the server issued and still holds owns anything (a forged key,
one flushed by logout, one rotated by login owns nothing); login moves the session's
actions to the user unless ``CLAIM_SESSION_ACTIONS_ON_LOGIN`` is off.

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
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.middleware import SessionMiddleware
from django.contrib.sessions.models import Session
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from async_actions import files, ownership
from async_actions.fairness import Owner
from async_actions.models import Action, ActionFile
from example_project.asgi import application
from tests.helpers import wait_for
from tests.views import BoomView, EchoView, GateView

pytestmark = pytest.mark.django_db(transaction=True)

#: name: (is_staff, is_superuser, permissions)
USERS: dict[str, tuple[bool, bool, tuple[str, ...]]] = {
    "alice": (False, False, ()),
    "bob": (False, False, ()),
    "staff": (True, True, ()),  # a superuser: every permission
    "staff-noperm": (True, False, ()),
    "staff-view": (True, False, ("view_action",)),
    "changer": (False, False, ("change_action",)),
}
VISITORS = ["alice", "bob", "session-1", "session-2", *list(USERS)[2:]]
OWNERS = ["alice", "session-1", "staff-noperm"]
SEE_ALL = {"staff", "staff-view", "changer"}
CONTROL_ALL = {"staff", "changer"}
SURFACES = [
    "processing page",
    "cancel button",
    "result page",
    "status JSON",
    "cancel",
    "API retrieve",
    "API cancel",
    "API log",
    "API list",
    "file download",
    "API file download",
    "WebSocket",
    "WebSocket cancel",
    "admin change page",
    "admin cancel",
    "admin file download",
]


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Any) -> None:
    """Each action of the matrix gets a result file; they go to a folder of the test's."""
    settings.MEDIA_ROOT = str(tmp_path)


def grant(user: Any, *codenames: str) -> None:
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="async_actions", codename__in=codenames)
    )


class Visitor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.client = Client()  # Django's test client skips CSRF; tested on its own below
        self.user = None
        if name in USERS:
            is_staff, is_superuser, permissions = USERS[name]
            self.user = get_user_model().objects.create_user(
                name, password="pw", is_staff=is_staff, is_superuser=is_superuser
            )
            grant(self.user, *permissions)
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
    action = Action.objects.create(
        handler=GateView.handler_name(),
        status="running",
        percent=10,
        user=owner.user,
        session_key="" if owner.user else owner.session_key,
    )
    files.add_file(action.pk, "export.csv", b"a,b\n")
    return action


def _download(response: Any) -> str:
    """``200 <content>`` for a served file, else the status."""
    if response.status_code != 200:
        return str(response.status_code)
    return f"200 {b''.join(response.streaming_content).decode()}"


def _ws_outcome(session_key: str, pk: Any, *, cancel: bool = False) -> str:
    """``snapshot``, ``close <code>``, or with ``cancel`` the status the cancel frame got."""

    async def connect() -> str:
        ws = WebsocketCommunicator(
            application,
            f"/ws/async-actions/{pk}/",
            headers=[
                (b"origin", b"http://testserver"),
                (b"host", b"testserver"),
                (b"cookie", f"sessionid={session_key}".encode()),
            ],
        )
        connected, _ = await ws.connect(timeout=10)
        assert connected
        try:
            message = await ws.receive_output(timeout=10)
            if message["type"] == "websocket.close":
                return f"close {message.get('code')}"
            if json.loads(message["text"])["action"]["id"] != str(pk):
                return "?"
            if not cancel:
                return "snapshot"
            await ws.send_json_to({"type": "cancel"})
            while True:  # updates the cancel causes may come first
                frame = await ws.receive_json_from(timeout=10)
                if frame["type"] == "cancel":
                    return str(frame["status"])
        finally:
            await ws.disconnect()

    return async_to_sync(connect)()


def _outcome(surface: str, visitor: Visitor, pk: Any) -> str:
    c = visitor.client
    page = lambda name: reverse(f"gate_view:{name}", kwargs={"pk": pk})  # noqa: E731
    if surface == "processing page":
        return str(c.get(page("processing")).status_code)
    if surface == "cancel button":
        response = c.get(page("processing"))
        if response.status_code != 200:
            return str(response.status_code)
        return "button" if page("cancel") in response.content.decode() else "none"
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
    if surface.endswith("file download"):
        file_id = ActionFile.objects.get(action_id=pk).pk
        url = {
            "file download": reverse("gate_view:file", kwargs={"pk": pk, "file_id": file_id}),
            "API file download": f"/api/actions/{pk}/files/{file_id}/",
            "admin file download": f"/admin/async_actions/action/{pk}/files/{file_id}/",
        }[surface]
        return _download(c.get(url))
    if surface == "WebSocket":
        return _ws_outcome(visitor.session_key, pk)
    if surface == "WebSocket cancel":
        return _ws_outcome(visitor.session_key, pk, cancel=True)
    if surface == "admin change page":
        response = c.get(f"/admin/async_actions/action/{pk}/change/")
        return str(response.status_code)
    if surface == "admin cancel":
        return str(c.post(f"/admin/async_actions/action/{pk}/cancel/").status_code)
    raise AssertionError(surface)


def _expected(surface: str, visitor: Visitor, sees: bool, controls: bool) -> str:
    if surface.startswith("API") and visitor.anonymous:
        return "401"  # the API is for authenticated clients, owners included
    if surface.startswith("admin"):  # the admin goes by permissions, not by owner
        if visitor.name not in ("staff", "staff-view", "staff-noperm"):
            return "302"  # to the admin login
        if surface == "admin change page":
            return "403" if visitor.name == "staff-noperm" else "200"
        if surface == "admin file download":  # view permission, else as if missing
            return "404" if visitor.name == "staff-noperm" else "200 a,b\n"
        return {"staff": "202", "staff-view": "403", "staff-noperm": "404"}[visitor.name]
    if surface == "WebSocket":
        return "snapshot" if sees else "close 4404"
    if surface == "API list":
        return "listed" if sees else "absent"
    if not sees:
        return "close 4404" if surface == "WebSocket cancel" else "404"
    if surface == "cancel button":
        return "button" if controls else "none"
    if not controls and surface in ("cancel", "API cancel"):
        return "403"
    if surface == "WebSocket cancel":
        return "ok" if controls else "forbidden"
    return {
        "processing page": "200",
        "result page": "302",  # a running action's result page sends to processing
        "status JSON": "200",
        "cancel": "202",
        "API retrieve": "200",
        "API cancel": "202",
        "API log": "200",
        "file download": "200 a,b\n",
        "API file download": "200 a,b\n",
    }[surface]


@pytest.mark.parametrize("owner_name", OWNERS)
def test_the_owner_and_permission_holders_see_an_action_on_every_surface(
    owner_name: str,
) -> None:
    """Fails on df31ab2: is_staff alone saw and controlled everything, view_action nothing."""
    visitors = {name: Visitor(name) for name in VISITORS}
    owner = visitors[owner_name]
    wrong = []
    cells = 0
    for surface in SURFACES:
        for visitor in visitors.values():
            pk = _action(owner).pk  # a fresh one: cancel changes what it touches
            sees = visitor is owner or visitor.name in SEE_ALL
            controls = visitor is owner or visitor.name in CONTROL_ALL
            got = _outcome(surface, visitor, pk)
            want = _expected(surface, visitor, sees, controls)
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


def test_tracebacks_are_for_staff_who_may_see_all_actions() -> None:
    """Fails on df31ab2: is_staff alone got tracebacks, even without any permission."""
    visitors = {name: Visitor(name) for name in VISITORS}
    wrong = []
    for owner_name in OWNERS:
        owner = visitors[owner_name]
        pk = Action.objects.create(
            handler=BoomView.handler_name(),
            status="failed",
            error="It broke.",
            traceback="Traceback: secret path",
            user=owner.user,
            session_key="" if owner.user else owner.session_key,
        ).pk
        for visitor in visitors.values():
            if not (visitor is owner or visitor.name in SEE_ALL):
                continue
            shown = visitor.name in ("staff", "staff-view")
            c = visitor.client
            status = c.get(reverse("boom_view:status", kwargs={"pk": pk})).json()
            page = c.get(reverse("boom_view:result", kwargs={"pk": pk})).content.decode()
            got = {
                "status JSON": "secret path" in status.get("traceback", ""),
                "failed page": "secret path" in page,
            }
            if not visitor.anonymous:
                got["API"] = "secret path" in c.get(f"/api/actions/{pk}/").json()["traceback"]
            for surface, seen in got.items():
                if seen != shown:
                    wrong.append(f"{owner_name}'s / {visitor.name} / {surface}: {seen}")
    assert not wrong, "\n".join(wrong)


# -- sessions: only one the server issued and still holds owns anything -----------------

FORGED = "forgedsessionkey0000000000000000"  # well-formed, never issued


def _anonymous_start(client: Client, view: Any = EchoView) -> Action:
    namespace = view.namespace()
    response = client.post(reverse(f"{namespace}:initial"), {"word": "hi"})
    assert response.status_code == 303, response
    pk = response["Location"].rstrip("/").rsplit("/", 1)[-1]
    return wait_for(lambda: Action.objects.filter(pk=pk, status="succeeded").first())


def _reads(session_key: str, pk: Any) -> dict[str, str]:
    """What a client holding only this session cookie gets on the session's surfaces."""
    client = Client()
    client.cookies["sessionid"] = session_key
    page = lambda name: reverse(f"echo_view:{name}", kwargs={"pk": pk})  # noqa: E731
    return {
        "result page": str(client.get(page("result")).status_code),
        "status JSON": str(client.get(page("status")).status_code),
        "cancel": str(client.post(page("cancel"), HTTP_ACCEPT="application/json").status_code),
        "WebSocket": _ws_outcome(session_key, pk),
    }


NOTHING = {"result page": "404", "status JSON": "404", "cancel": "404", "WebSocket": "close 4404"}


def test_a_forged_session_cookie_neither_reads_nor_starts_under_its_key(runner: Any) -> None:
    """Fails on df31ab2: the raw cookie value was the owner key, issued or not."""
    planted = Action.objects.create(
        handler=EchoView.handler_name(), status="succeeded", session_key=FORGED
    )
    assert _reads(FORGED, planted.pk) == NOTHING
    client = Client()
    client.cookies["sessionid"] = FORGED
    started = _anonymous_start(client)
    assert started.session_key != FORGED
    assert started.session_key == client.cookies["sessionid"].value  # a new cookie
    assert Session.objects.filter(session_key=started.session_key).exists()
    assert not Session.objects.filter(session_key=FORGED).exists()


def test_the_cookie_of_a_logged_out_session_grants_nothing(runner: Any) -> None:
    """Fails on df31ab2: the flushed key still read the session's actions."""
    client = Client()
    action = _anonymous_start(client)
    old_key = client.cookies["sessionid"].value
    assert _reads(old_key, action.pk)["result page"] == "200"
    assert client.post(reverse("logout")).status_code == 302
    assert _reads(old_key, action.pk) == NOTHING
    # A user's session likewise: logging out ends what its cookie can do.
    get_user_model().objects.create_user("carol", password="pw")
    assert client.post(reverse("login"), {"username": "carol", "password": "pw"}).status_code == 302
    mine = _anonymous_start(client)
    user_key = client.cookies["sessionid"].value
    assert _reads(user_key, mine.pk)["result page"] == "200"
    client.post(reverse("logout"))
    assert _reads(user_key, mine.pk) == NOTHING


def test_login_moves_the_sessions_actions_to_the_user_and_the_old_key_grants_nothing(
    runner: Any,
) -> None:
    """Fails on df31ab2: the actions stayed with the old key, which still read them."""
    user = get_user_model().objects.create_user("dave", password="pw")
    client = Client()
    first, second = _anonymous_start(client), _anonymous_start(client)
    old_key = client.cookies["sessionid"].value
    assert client.post(reverse("login"), {"username": "dave", "password": "pw"}).status_code == 302
    new_key = client.cookies["sessionid"].value
    assert new_key != old_key  # Django cycled the key
    assert set(Action.objects.filter(user=user).values_list("pk", flat=True)) == {
        first.pk,
        second.pk,
    }
    assert _reads(old_key, first.pk) == NOTHING
    for action in (first, second):
        assert client.get(reverse("echo_view:result", kwargs={"pk": action.pk})).status_code == 200
        assert client.get(f"/api/actions/{action.pk}/").status_code == 200
        assert _ws_outcome(new_key, action.pk) == "snapshot"
    listed = {a["id"] for a in client.get("/api/actions/").json()["results"]}
    assert listed == {str(first.pk), str(second.pk)}


def test_with_the_move_turned_off_login_leaves_the_actions_behind(runner: Any) -> None:
    """Fails on df31ab2 (the old key still read them); documented: they stay anonymous."""
    get_user_model().objects.create_user("erin", password="pw")
    client = Client()
    action = _anonymous_start(client)
    old_key = client.cookies["sessionid"].value
    with override_settings(ASYNC_ACTIONS={"CLAIM_SESSION_ACTIONS_ON_LOGIN": False}):
        client.post(reverse("login"), {"username": "erin", "password": "pw"})
    action.refresh_from_db()
    assert action.user is None and action.session_key == old_key
    assert client.get(reverse("echo_view:result", kwargs={"pk": action.pk})).status_code == 404
    assert _reads(old_key, action.pk) == NOTHING


def test_login_leaves_behind_an_unfinished_action_whose_idempotency_key_the_user_has() -> None:
    """Moving never breaks login: one owner has one unfinished action per idempotency key."""
    user = get_user_model().objects.create_user("fay", password="pw")
    Action.objects.create(handler="h", user=user, idempotency_key="k", status="running")
    store = SessionStore()
    store.create()
    clash = Action.objects.create(
        handler="h", session_key=store.session_key, idempotency_key="k", status="running"
    )
    done = Action.objects.create(
        handler="h", session_key=store.session_key, idempotency_key="k", status="succeeded"
    )
    store["_async_actions_keys"] = [store.session_key]
    store.save()
    client = Client()
    client.cookies["sessionid"] = store.session_key
    assert client.post(reverse("login"), {"username": "fay", "password": "pw"}).status_code == 302
    assert Action.objects.get(pk=clash.pk).user is None
    assert Action.objects.get(pk=done.pk).user == user


class SiteSessionMiddleware(SessionMiddleware):
    """A site's own session middleware: it sets ``request.session`` as Django's does."""


def test_checks_refuse_a_bad_move_setting_and_warn_about_signed_cookie_sessions() -> None:
    from async_actions.checks import check_settings

    def ids() -> list[str]:
        return [
            m.id
            for m in check_settings()
            if m.id in ("async_actions.E040", "async_actions.W040", "async_actions.W041")
        ]

    assert ids() == []
    with override_settings(ASYNC_ACTIONS={"CLAIM_SESSION_ACTIONS_ON_LOGIN": "yes"}):
        assert ids() == ["async_actions.E040"]
    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"):
        assert ids() == ["async_actions.W040"]
    session = "django.contrib.sessions.middleware.SessionMiddleware"
    without = [m for m in settings.MIDDLEWARE if m != session]
    with override_settings(MIDDLEWARE=without):
        assert ids() == ["async_actions.W041"]
    with override_settings(MIDDLEWARE=[*without, "tests.test_ownership.SiteSessionMiddleware"]):
        assert ids() == []  # a subclass of Django's sets request.session too


def test_without_session_middleware_an_anonymous_start_leads_to_a_404(client: Client) -> None:
    """What W041 warns about, as a visitor sees it."""
    session = "django.contrib.sessions.middleware.SessionMiddleware"
    kept = [
        m for m in settings.MIDDLEWARE if m != session and "auth" not in m and "messages" not in m
    ]
    with override_settings(MIDDLEWARE=kept):
        response = client.post(reverse("echo_view:initial"), {"word": "hi"})
        assert response.status_code == 303
        assert client.get(response["Location"]).status_code == 404


def test_connections_count_against_the_same_owner_the_pages_recognise() -> None:
    """The socket caps key a visitor as ownership does: user, else an issued session."""
    user = get_user_model().objects.create_user("counted", password="pw")
    assert ownership.visitor_owner(user, SessionStore()) == Owner("user", user.pk)

    issued = SessionStore()
    issued.create()
    loaded = SessionStore(session_key=issued.session_key)
    list(ownership.visible_actions(None, loaded))
    assert ownership.visitor_owner(None, loaded) == Owner("session", issued.session_key)

    forged = SessionStore(session_key="x" * 32)  # never issued: counts against nobody
    list(ownership.visible_actions(None, forged))
    assert ownership.visitor_owner(None, forged) is None
    assert ownership.visitor_owner(None, None) is None
