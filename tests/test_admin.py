"""The actions admin: list, search, filters, read-only detail, live progress, actions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from async_actions.models import Action
from tests.actions import gate
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)

LIST = "/admin/async_actions/action/"


def change_url(action: Action) -> str:
    return reverse("admin:async_actions_action_change", args=[action.pk])


def make_rows(count: int, **fields: Any) -> None:
    user = get_user_model().objects.create_user(f"owner{count}", password="pw")
    Action.objects.bulk_create(
        Action(
            handler=f"tests.h{i % 5}",
            user=user if i % 2 else None,
            session_key="" if i % 2 else f"s{i}",
            status=Action.Status.SUCCEEDED if i % 3 else Action.Status.RUNNING,
            percent=i % 100,
            **fields,
        )
        for i in range(count)
    )


def list_queries(client: Client) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(LIST)
    assert response.status_code == 200
    return len(queries)


def test_list_page_query_count_does_not_grow_with_rows(staff: Client) -> None:
    make_rows(10)
    few = list_queries(staff)
    make_rows(10_000)
    many = list_queries(staff)
    assert many == few
    response = staff.get(LIST)
    assert b"aa-badge--running" in response.content
    assert b'role="progressbar"' in response.content


def test_list_shows_short_id_owner_badge_progress_and_duration(staff: Client) -> None:
    user = get_user_model().objects.create_user("carol", password="pw")
    now = timezone.now()
    action = Action.objects.create(
        handler="tests.echo",
        user=user,
        status="succeeded",
        percent=100,
        started_at=now - timedelta(seconds=75),
        finished_at=now,
    )
    page = staff.get(LIST).content.decode()
    assert action.short_id in page
    assert "carol" in page
    assert "aa-badge--succeeded" in page
    assert "1:15" in page


def test_search_finds_by_id_prefix_full_id_handler_and_owner(staff: Client) -> None:
    user = get_user_model().objects.create_user("dave", password="pw")
    target = Action.objects.create(handler="reports.build", user=user)
    Action.objects.create(handler="other.thing")

    def found(term: str) -> list[str]:
        response = staff.get(LIST, {"q": term})
        assert response.status_code == 200
        return [a.short_id for a in response.context["cl"].result_list]

    assert found(target.short_id) == [target.short_id]
    assert found(str(target.pk)) == [target.short_id]
    assert found("reports.build") == [target.short_id]
    assert found("dave") == [target.short_id]
    assert found("zz-no-match") == []


def test_the_list_does_not_spell_out_a_visitors_session_key(staff: Client) -> None:
    """The list shows 8 characters of an anonymous owner's session key (the visitor's
    session cookie). Before, ``?session_key__startswith=`` and a substring search told
    whoever may view the list whether a guessed prefix matched: the whole key in ~600
    requests."""
    key = "k3y0fav1s1torsess10nc00k1e0123456"
    target = Action.objects.create(handler="tests.echo", session_key=key)
    Action.objects.create(handler="tests.echo", session_key="another0session0key0000000000000")

    def found(params: dict[str, str]) -> list[str]:
        response = staff.get(LIST, params)
        assert response.status_code == 200
        return [a.short_id for a in response.context["cl"].result_list]

    for lookup in ["session_key__startswith", "session_key__contains", "session_key__regex"]:
        assert staff.get(LIST, {lookup: key[:9]}).status_code == 400
    assert found({"q": key[:9]}) == []
    assert found({"q": key[4:]}) == []
    assert found({"q": key}) == [target.short_id]  # the whole key still finds its actions


def test_filters_by_status_and_handler(staff: Client) -> None:
    Action.objects.create(handler="a.one", status="failed")
    Action.objects.create(handler="a.two", status="succeeded")
    failed = staff.get(LIST, {"status__exact": "failed"}).context["cl"].result_list
    assert [a.handler for a in failed] == ["a.one"]
    two = staff.get(LIST, {"handler": "a.two"}).context["cl"].result_list
    assert [a.status for a in two] == ["succeeded"]


def test_change_page_is_read_only_with_pretty_json_log_and_traceback(staff: Client) -> None:
    action = Action.objects.create(
        handler="tests.boom",
        status="failed",
        request={"rows": [1, 2], "name": "<b>x</b>"},
        response=None,
        error="It broke",
        traceback='Traceback (most recent call last):\n  File "x.py"',
        log=[{"time": 0, "level": "INFO", "message": "step one"}],
    )
    response = staff.get(change_url(action))
    page = response.content.decode()
    assert response.status_code == 200
    assert "  &quot;name&quot;: &quot;&lt;b&gt;x&lt;/b&gt;&quot;" in page  # indented, escaped
    assert "step one" in page
    assert "Traceback (most recent call last)" in page
    assert 'name="_save"' not in page  # nothing to edit
    assert "<async-action-progress" not in page  # finished: no live element
    post = staff.post(change_url(action), {"handler": "changed"})
    assert post.status_code == 403
    assert Action.objects.get(pk=action.pk).handler == "tests.boom"


def test_change_page_of_a_running_action_shows_live_progress(staff: Client, runner: Any):
    from async_actions import service

    gate("admin-live").clear()
    started = service.start("tests.wait", {"gate": "admin-live"})
    wait_for(lambda: Action.objects.get(pk=started.action.pk).status == "running")
    page = staff.get(change_url(started.action)).content.decode()
    assert "<async-action-progress" in page
    status_url = reverse("admin:async_actions_action_status", args=[started.action.pk])
    assert f'data-status-url="{status_url}"' in page
    snapshot = staff.get(status_url).json()
    assert snapshot["status"] == "running"
    cancel_url = reverse("admin:async_actions_action_cancel", args=[started.action.pk])
    assert staff.post(cancel_url).status_code == 202
    final = wait_for(lambda: Action.objects.filter(pk=started.action.pk).finished().first())
    assert final.status == "cancelled"
    assert staff.post(cancel_url).status_code == 409


def test_admin_cancel_selected(staff: Client, runner: Any) -> None:
    from async_actions import service

    gate("admin-cancel").clear()
    running = service.start("tests.wait", {"gate": "admin-cancel"}).action
    done = Action.objects.create(handler="tests.echo", status="succeeded")
    wait_for(lambda: Action.objects.get(pk=running.pk).status == "running")
    response = staff.post(
        LIST,
        {"action": "cancel_selected", "_selected_action": [running.pk, done.pk]},
        follow=True,
    )
    text = [str(m) for m in response.context["messages"]]
    assert "1 action cancelled or asked to stop." in text
    assert "1 action had already finished." in text
    final = wait_for(lambda: Action.objects.filter(pk=running.pk).finished().first())
    assert final.status == "cancelled"
    assert Action.objects.get(pk=done.pk).status == "succeeded"


def test_admin_retry_selected_starts_a_linked_copy(staff: Client, runner: Any) -> None:
    owner = get_user_model().objects.create_user("erin", password="pw")
    original = Action.objects.create(
        handler="tests.echo", request={"n": 7}, user=owner, status="failed", error="x"
    )
    response = staff.post(
        LIST, {"action": "retry_selected", "_selected_action": [original.pk]}, follow=True
    )
    assert "1 action started again." in [str(m) for m in response.context["messages"]]
    retry = Action.objects.get(retry_of=original)
    assert (retry.handler, retry.request, retry.user) == ("tests.echo", {"n": 7}, owner)
    assert wait_for(lambda: Action.objects.get(pk=retry.pk).status == "succeeded")
    detail = staff.get(change_url(original)).content.decode()
    assert retry.short_id in detail


def test_admin_retry_of_an_unknown_handler_says_why(staff: Client) -> None:
    original = Action.objects.create(handler="gone.handler", status="failed")
    response = staff.post(
        LIST, {"action": "retry_selected", "_selected_action": [original.pk]}, follow=True
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert f"{original.short_id}: no_handler" in text
    assert Action.objects.count() == 1


def test_purge_expired_removes_only_expired_finished_actions(staff: Client) -> None:
    past = timezone.now() - timedelta(days=1)
    old = Action.objects.create(handler="h", status="succeeded", expires_at=past)
    fresh = Action.objects.create(
        handler="h", status="succeeded", expires_at=timezone.now() + timedelta(days=1)
    )
    active = Action.objects.create(handler="h", status="running", expires_at=past)
    response = staff.post(reverse("admin:async_actions_action_purge"), follow=True)
    assert "1 expired action removed." in [str(m) for m in response.context["messages"]]
    assert set(Action.objects.values_list("pk", flat=True)) == {fresh.pk, active.pk}
    assert old.pk not in set(Action.objects.values_list("pk", flat=True))
    assert "Purge expired" in response.content.decode()


def test_non_staff_cannot_reach_admin_status_or_cancel(runner: Any) -> None:
    get_user_model().objects.create_user("frank", password="pw")
    client = Client()
    client.login(username="frank", password="pw")
    action = Action.objects.create(handler="h", status="running")
    status_url = reverse("admin:async_actions_action_status", args=[action.pk])
    cancel_url = reverse("admin:async_actions_action_cancel", args=[action.pk])
    assert client.get(status_url).status_code == 302  # to the admin login
    assert client.post(cancel_url).status_code == 302
    assert Action.objects.get(pk=action.pk).cancel_requested is False


def test_change_page_shows_the_percent_whole_as_the_bar_does(staff: Client) -> None:
    action = Action.objects.create(handler="tests.echo", status="failed", percent=41.32231404958678)
    page = staff.get(change_url(action)).content.decode()
    assert "41 %" in page
    assert "41.32" not in page


def test_read_only_change_page_has_no_delete_button_yet_the_delete_page_works(
    staff: Client,
) -> None:
    action = Action.objects.create(handler="tests.echo", status="succeeded")
    page = staff.get(change_url(action)).content.decode()
    delete_url = reverse("admin:async_actions_action_delete", args=[action.pk])
    assert delete_url not in page
    assert 'class="deletelink"' not in page
    # operators still delete finished records on purpose: the list's action, the URL
    assert staff.post(delete_url, {"post": "yes"}).status_code == 302
    assert not Action.objects.filter(pk=action.pk).exists()
