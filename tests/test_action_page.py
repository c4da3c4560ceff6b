"""Every action knows its page (issue 19 item 6): the API's ``url`` and the admin's
"View on site" lead to the processing page of the view that started it, or to
``DEFAULT_ACTION_PAGE`` for actions started elsewhere; none only when none is set."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.urls import reverse
from rest_framework.test import APIClient

from async_actions import service
from async_actions.models import Action
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db

SETTINGS = {"MAX_ACTIVE_PER_OWNER": None, "MAX_RUNNING_PER_OWNER": None}


@pytest.fixture
def alice(db: None) -> Any:
    return get_user_model().objects.create_user("alice", password="pw")


@pytest.fixture
def staff(db: None) -> Client:
    get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    client = Client()
    client.login(username="boss", password="pw")
    return client


def api_url(user: Any, action: Action) -> str | None:
    api = APIClient()
    api.force_authenticate(user)
    response = api.get(f"/api/actions/{action.pk}/")
    assert response.status_code == 200
    return response.json()["url"]


def view_on_site(staff: Client, action: Action) -> str | None:
    """Where the admin's "View on site" button leads, or None when there is none."""
    page = staff.get(reverse("admin:async_actions_action_change", args=[action.pk]))
    assert page.status_code == 200
    found = re.search(r'<a href="([^"]*)" class="viewsitelink"', page.content.decode())
    return found.group(1) if found else None


def test_a_view_started_action_links_to_that_views_processing_page(
    alice: Any, staff: Client, runner: Any
) -> None:
    client = Client()
    client.force_login(alice)
    response = client.post("/t/echo/", {"word": "x"})
    action = Action.objects.get()
    processing = reverse("echo_view:processing", kwargs={"pk": action.pk})
    assert response["Location"] == processing
    assert action.page == "echo_view:processing"
    assert api_url(alice, action) == f"http://testserver{processing}"
    assert view_on_site(staff, action) == processing
    wait_for(lambda: Action.objects.get(pk=action.pk).is_finished)
    # the link still works once it ended: the processing page sends on to the result
    assert client.get(processing)["Location"] == reverse(
        "echo_view:result", kwargs={"pk": action.pk}
    )


def test_a_service_started_action_links_to_the_default_page(
    alice: Any, staff: Client, runner: Any
) -> None:
    action = service.start("tests.echo", {"x": 1}, user=alice).action
    page = f"/actions/processing/{action.pk}/"
    assert reverse("async_actions:processing", kwargs={"pk": action.pk}) == page
    assert api_url(alice, action) == f"http://testserver{page}"
    assert view_on_site(staff, action) == page
    wait_for(lambda: Action.objects.get(pk=action.pk).is_finished)
    owner = Client()
    owner.force_login(alice)
    result = owner.get(page, follow=True)
    assert result.status_code == 200
    assert result.redirect_chain[-1][0] == f"/actions/result/{action.pk}/"
    assert "Start another" not in result.content.decode()  # this page started nothing
    # the generic pages keep ownership: another user gets 404
    other = Client()
    other.force_login(get_user_model().objects.create_user("mallory", password="pw"))
    assert other.get(page).status_code == 404
    assert other.get(f"/actions/result/{action.pk}/").status_code == 404
    assert owner.get("/actions/").status_code == 404  # no start page


def test_an_api_started_action_links_to_the_default_page(alice: Any) -> None:
    api = APIClient()
    api.force_authenticate(alice)
    created = api.post(
        "/api/actions/", {"handler": "tests.echo", "request": {}}, format="json"
    ).json()
    assert created["url"] == f"http://testserver/actions/processing/{created['id']}/"


@pytest.mark.parametrize("configured", [None, "nowhere:processing"])
def test_without_a_default_page_the_link_is_null_and_the_admin_has_no_button(
    alice: Any, staff: Client, configured: str | None
) -> None:
    action = Action.objects.create(handler="tests.echo", user=alice, status="succeeded")
    with override_settings(ASYNC_ACTIONS={**SETTINGS, "DEFAULT_ACTION_PAGE": configured}):
        assert action.get_absolute_url() == ""
        assert api_url(alice, action) is None
        assert view_on_site(staff, action) is None


def test_a_retry_keeps_the_page_of_its_original(staff: Client, runner: Any) -> None:
    original = Action.objects.create(
        handler="tests.echo", status="failed", page="echo_view:processing"
    )
    staff.post(
        "/admin/async_actions/action/",
        {"action": "retry_selected", "_selected_action": [original.pk]},
    )
    retry = Action.objects.get(retry_of=original)
    assert retry.get_absolute_url() == reverse("echo_view:processing", kwargs={"pk": retry.pk})
