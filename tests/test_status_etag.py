"""The status JSON is a conditional GET: an ETag that changes with every change of the
JSON, a bodiless 304 while it has not, never a 304 (or any hint) for a visitor who may not
see the action, and no session write or permission query for an owner's poll."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from async_actions import service
from async_actions.models import Action
from tests.actions import gate
from tests.helpers import wait_finished, wait_for
from tests.views import EchoView

pytestmark = pytest.mark.django_db


def _anonymous_owner() -> tuple[Client, str]:
    """A client whose session the server issued and holds, and that session's key."""
    client = Client()
    client.get(reverse("echo_view:initial"))
    session = client.session
    session.save()
    client.cookies["sessionid"] = session.session_key
    return client, session.session_key


def _user(name: str, *permissions: str, **extra: Any) -> Any:
    user = get_user_model().objects.create_user(name, password="pw", **extra)
    for codename in permissions:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="async_actions", codename=codename)
        )
    return user


def _running(**owner: Any) -> Action:
    """A running action of ``owner`` that no handler in this process runs (the row is all)."""
    return Action.objects.create(
        handler=EchoView.handler_name(), status="running", percent=10, **owner
    )


def _url(action: Any) -> str:
    return reverse("echo_view:status", kwargs={"pk": getattr(action, "pk", action)})


def test_an_unchanged_status_answers_304_without_a_body() -> None:
    client, key = _anonymous_owner()
    action = _running(session_key=key)
    first = client.get(_url(action))
    assert first.status_code == 200
    etag = first["ETag"]
    assert etag.startswith('W/"') and action.pk.hex in etag
    again = client.get(_url(action), HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    assert again["Cache-Control"] == "no-store"
    assert client.head(_url(action), HTTP_IF_NONE_MATCH=etag).status_code == 304
    # Any other validator is a stale one: the full JSON.
    stale = client.get(_url(action), HTTP_IF_NONE_MATCH='W/"something-else"')
    assert stale.status_code == 200
    assert stale.json()["percent"] == 10


def test_the_etag_changes_on_every_progress_update_and_transition() -> None:
    client, key = _anonymous_owner()
    action = _running(session_key=key)
    seen = [client.get(_url(action))["ETag"]]
    for percent in range(11, 31):
        assert service.update_progress(action.pk, percent, f"step {percent}") is service.OpStatus.OK
        response = client.get(_url(action), HTTP_IF_NONE_MATCH=seen[-1])
        assert response.status_code == 200, percent  # the client's copy is stale
        assert response.json()["percent"] == percent
        seen.append(response["ETag"])
    # A cancel request on a running action changes the JSON without a new seq.
    assert service.cancel(action.pk) is service.OpStatus.OK
    response = client.get(_url(action), HTTP_IF_NONE_MATCH=seen[-1])
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    seen.append(response["ETag"])
    assert service.complete(action.pk, {"done": True}) is service.OpStatus.OK
    response = client.get(_url(action), HTTP_IF_NONE_MATCH=seen[-1])
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    seen.append(response["ETag"])
    assert len(set(seen)) == len(seen)
    assert client.get(_url(action), HTTP_IF_NONE_MATCH=seen[-1]).status_code == 304


def test_the_etag_follows_live_progress_not_yet_written(client: Client, runner: Any) -> None:
    """A handler in this process reports ahead of its row; the ETag is of what is shown."""
    gate("etag").clear()
    response = client.post(reverse("gate_view:initial"), {"gate": "etag"})
    pk = response["Location"].rstrip("/").rsplit("/", 1)[1]
    url = reverse("gate_view:status", kwargs={"pk": pk})
    try:
        wait_for(lambda: client.get(url).json()["status"] == "running")
        etag = client.get(url)["ETag"]
        for percent in (20, 30, 40):
            assert service.update_progress(pk, percent) is service.OpStatus.OK
            response = client.get(url, HTTP_IF_NONE_MATCH=etag)
            assert response.status_code == 200
            assert response.json()["percent"] == percent
            assert response["ETag"] != etag
            etag = response["ETag"]
        assert client.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 304
    finally:
        gate("etag").set()
    wait_finished(pk)


def test_a_304_never_reaches_a_visitor_who_may_not_see_the_action() -> None:
    owner = _user("owner")
    action = _running(user=owner)
    as_owner = Client()
    as_owner.force_login(owner)
    etag = as_owner.get(_url(action))["ETag"]
    assert as_owner.get(_url(action), HTTP_IF_NONE_MATCH=etag).status_code == 304

    strangers = {"anonymous": Client(), "anonymous with a session": _anonymous_owner()[0]}
    for name, extra in {
        "another user": {},
        "staff without permissions": {"is_staff": True},
    }.items():
        strangers[name] = Client()
        strangers[name].force_login(_user(name.replace(" ", "-"), **extra))
    forged = Client()
    forged.cookies["sessionid"] = "forgedkeythattheserverneverissued1"
    strangers["a forged session"] = forged
    for name, client in strangers.items():
        for validator in (etag, "*"):
            response = client.get(_url(action), HTTP_IF_NONE_MATCH=validator)
            assert response.status_code == 404, (name, validator)
            assert not response.has_header("ETag"), name
    # Under another view's URLs the action does not exist either.
    other_view = reverse("gate_view:status", kwargs={"pk": action.pk})
    assert as_owner.get(other_view, HTTP_IF_NONE_MATCH=etag).status_code == 404


def test_who_may_see_all_shares_the_owners_etag_unless_shown_more() -> None:
    """A viewer gets the owner's JSON (so its 304); staff who see tracebacks do not."""
    owner = _user("owner")
    action = _running(user=owner)
    as_owner, viewer, staff = Client(), Client(), Client()
    as_owner.force_login(owner)
    viewer.force_login(_user("viewer", "view_action"))
    staff.force_login(_user("boss", "view_action", is_staff=True))
    etag = as_owner.get(_url(action))["ETag"]
    assert viewer.get(_url(action), HTTP_IF_NONE_MATCH=etag).status_code == 304
    response = staff.get(_url(action), HTTP_IF_NONE_MATCH=etag)
    assert response.status_code == 200
    assert "traceback" in response.json()
    assert staff.get(_url(action), HTTP_IF_NONE_MATCH=response["ETag"]).status_code == 304


def _writes(queries: CaptureQueriesContext) -> list[str]:
    verbs = ("INSERT", "UPDATE", "DELETE")
    return [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().startswith(verbs)]


@pytest.mark.parametrize("conditional", [False, True])
def test_an_owners_poll_writes_nothing_and_reads_no_permissions(conditional: bool) -> None:
    user = _user("owner")
    mine = _running(user=user)
    as_user = Client()
    as_user.force_login(user)
    anonymous, key = _anonymous_owner()
    theirs = _running(session_key=key)
    for client, action, rows in ((as_user, mine, 3), (anonymous, theirs, 2)):
        etag = client.get(_url(action))["ETag"] if conditional else ""
        headers = {"HTTP_IF_NONE_MATCH": etag} if conditional else {}
        with CaptureQueriesContext(connection) as queries:
            response = client.get(_url(action), **headers)
        assert response.status_code == (304 if conditional else 200)
        assert _writes(queries) == []
        # The session, the user (when logged in), the action: no permission tables.
        sql = [q["sql"] for q in queries.captured_queries]
        assert len(sql) == rows, sql
        assert not any("auth_permission" in statement for statement in sql), sql
