"""BaseAsyncView and AsyncFormView: pages, status JSON, cancel, ownership, errors."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from async_actions.handlers import get_handler, unregister
from async_actions.models import Action
from async_actions.views import CancelPage, FilePage, ProcessingPage, ResultPage, StatusPage
from tests.actions import gate
from tests.helpers import failing_action_inserts, wait_finished, wait_for
from tests.views import EchoView, GateView

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)

PAGES = ["processing", "result", "status"]


def action_id_from(response: Any) -> str:
    match = re.search(r"/processing/([0-9a-f-]{36})/$", response["Location"])
    assert match, response["Location"]
    return match.group(1)


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def make_user(db: None) -> Any:
    def make(name: str, **extra: Any) -> Any:
        return get_user_model().objects.create_user(name, password="pw", **extra)

    return make


def with_permission(user: Any, codename: str) -> Any:
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="async_actions", codename=codename)
    )
    return user


def start(client: Client, name: str = "echo_view", data: dict | None = None) -> str:
    response = client.post(reverse(f"{name}:initial"), data or {"word": "hi"})
    assert response.status_code == 303
    return action_id_from(response)


def test_get_renders_the_initial_page(client: Client) -> None:
    response = client.get(reverse("echo_view:initial"))
    assert response.status_code == 200
    assert b"<form" in response.content
    assert Action.objects.count() == 0


def test_post_starts_the_action_and_answers_303_to_the_processing_page(
    client: Client, runner: Any
) -> None:
    pk = start(client)
    action = wait_finished(pk)
    assert action.handler == "tests.views.EchoView"
    assert action.status == "succeeded"
    assert action.response == {"echo": {"word": "hi"}}


def test_anonymous_visitor_gets_a_session_that_owns_the_action(client: Client, runner: Any) -> None:
    pk = start(client)
    action = Action.objects.get(pk=pk)
    assert action.user is None
    assert action.session_key and action.session_key == client.session.session_key


def test_processing_page_shows_the_accessible_live_element(client: Client, runner: Any) -> None:
    gate("proc").clear()
    pk = start(client, "gate_view", {"gate": "proc"})
    try:
        response = client.get(reverse("gate_view:processing", kwargs={"pk": pk}))
        html = response.content.decode()
        assert response.status_code == 200
        assert "<async-action-progress" in html
        assert 'role="progressbar"' in html and "aria-valuenow=" in html
        assert f'data-ws-path="/ws/async-actions/{pk}/"' in html
        assert f'data-status-url="/t/gate/status/{pk}/"' in html
        assert '<noscript data-aa-fallback><meta http-equiv="refresh"' in html
        assert 'addEventListener("load"' in html  # turns it on when progress.js fails
        assert "async_actions/progress.js" in html
    finally:
        gate("proc").set()
    wait_finished(pk)


def test_result_page_shows_the_response_and_processing_redirects_there(
    client: Client, runner: Any
) -> None:
    pk = start(client, data={"word": "needle-42"})
    wait_finished(pk)
    processing = client.get(reverse("echo_view:processing", kwargs={"pk": pk}))
    assert processing.status_code == 302
    assert processing["Location"] == reverse("echo_view:result", kwargs={"pk": pk})
    result = client.get(processing["Location"])
    assert result.status_code == 200
    assert result.context["response"] == {"echo": {"word": "needle-42"}}
    assert b"needle-42" in result.content


def test_result_of_a_running_action_redirects_to_processing(client: Client, runner: Any) -> None:
    gate("running").clear()
    pk = start(client, "gate_view", {"gate": "running"})
    try:
        response = client.get(reverse("gate_view:result", kwargs={"pk": pk}))
        assert response.status_code == 302
        assert response["Location"] == reverse("gate_view:processing", kwargs={"pk": pk})
    finally:
        gate("running").set()
    wait_finished(pk)


def test_status_json_reports_progress_result_url_and_completed(client: Client, runner: Any) -> None:
    pk = start(client)
    wait_finished(pk)
    data = client.get(reverse("echo_view:status", kwargs={"pk": pk})).json()
    assert data["status"] == "succeeded"
    assert data["completed"] is True
    assert data["percent"] == 100
    assert data["message"] == "echoing"
    assert data["seq"] > 0
    assert data["result_url"] == reverse("echo_view:result", kwargs={"pk": pk})
    assert "traceback" not in data


@pytest.mark.parametrize(
    ("status", "percent", "completed"),
    [
        ("pending", 0, False),
        ("running", 37.5, 37.5),
        ("failed", 10, "ERROR"),
        ("cancelled", 10, "ERROR"),
        ("succeeded", 100, True),
    ],
)
def test_completed_follows_the_netsight_convention(
    client: Client, status: str, percent: float, completed: Any
) -> None:
    client.get(reverse("echo_view:initial"))
    client.session.save()
    session_key = client.session.session_key
    client.cookies["sessionid"] = session_key
    action = Action.objects.create(
        handler=EchoView.handler_name(), status=status, percent=percent, session_key=session_key
    )
    data = client.get(reverse("echo_view:status", kwargs={"pk": action.pk})).json()
    assert data["completed"] == completed


@pytest.mark.parametrize("page", [*PAGES, "cancel"])
def test_another_visitor_gets_404_on_every_url(client: Client, runner: Any, page: str) -> None:
    gate("other").clear()
    pk = start(client, "gate_view", {"gate": "other"})
    try:
        stranger = Client()
        url = reverse(f"gate_view:{page}", kwargs={"pk": pk})
        response = stranger.post(url) if page == "cancel" else stranger.get(url)
        assert response.status_code == 404
        assert Action.objects.get(pk=pk).cancel_requested is False
    finally:
        gate("other").set()
    wait_finished(pk)


@pytest.mark.parametrize("page", PAGES)
def test_another_user_gets_404_and_view_permission_sees_the_action(
    runner: Any, make_user: Any, page: str
) -> None:
    owner, other, staff, viewer = Client(), Client(), Client(), Client()
    owner.force_login(make_user("owner"))
    other.force_login(make_user("other"))
    staff.force_login(make_user("boss", is_staff=True))
    viewer.force_login(with_permission(make_user("viewer"), "view_action"))
    pk = start(owner)
    wait_finished(pk)
    url = reverse(f"echo_view:{page}", kwargs={"pk": pk})
    assert other.get(url).status_code == 404
    assert staff.get(url).status_code == 404  # is_staff alone grants nothing
    assert viewer.get(url).status_code in (200, 302)
    assert Action.objects.get(pk=pk).session_key == ""


def test_an_action_of_one_view_is_404_under_another_view(client: Client, runner: Any) -> None:
    pk = start(client)
    wait_finished(pk)
    assert client.get(reverse("echo_view:result", kwargs={"pk": pk})).status_code == 200
    assert client.get(reverse("boom_view:result", kwargs={"pk": pk})).status_code == 404


def test_failed_page_hides_the_traceback_from_non_staff(client: Client, runner: Any) -> None:
    pk = start(client, "boom_view")
    wait_finished(pk)
    page = client.get(reverse("boom_view:result", kwargs={"pk": pk}))
    assert page.status_code == 200
    assert b"unexpected error" in page.content
    assert b"secret path" not in page.content and b"Traceback" not in page.content
    status = client.get(reverse("boom_view:status", kwargs={"pk": pk})).json()
    assert status["completed"] == "ERROR"
    assert "secret path" not in str(status)


def test_staff_with_view_permission_see_the_traceback_on_the_failed_page(
    runner: Any, make_user: Any
) -> None:
    staff = Client()
    staff.force_login(with_permission(make_user("boss", is_staff=True), "view_action"))
    pk = start(staff, "boom_view")
    wait_finished(pk)
    page = staff.get(reverse("boom_view:result", kwargs={"pk": pk}))
    assert b"secret path" in page.content
    assert (
        "secret path"
        in staff.get(reverse("boom_view:status", kwargs={"pk": pk})).json()["traceback"]
    )


def test_action_error_message_is_shown_to_the_user(client: Client, runner: Any) -> None:
    pk = start(client, "user_error_view")
    wait_finished(pk)
    page = client.get(reverse("user_error_view:result", kwargs={"pk": pk}))
    assert b"Row 3 is not a number" in page.content
    assert client.get(reverse("user_error_view:status", kwargs={"pk": pk})).json()["error"] == (
        "Row 3 is not a number"
    )


def test_cancel_of_a_running_action_ends_it_cancelled(client: Client, runner: Any) -> None:
    gate("cancel").clear()
    pk = start(client, "gate_view", {"gate": "cancel"})
    wait_for(lambda: Action.objects.filter(pk=pk, status="running").exists())
    response = client.post(
        reverse("gate_view:cancel", kwargs={"pk": pk}), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 202
    assert response.json() == {"status": "ok"}
    assert wait_finished(pk).status == "cancelled"
    page = client.get(reverse("gate_view:result", kwargs={"pk": pk}))
    assert b"cancelled" in page.content.lower()


def test_cancel_from_a_plain_form_redirects_303(client: Client, runner: Any) -> None:
    gate("form-cancel").clear()
    pk = start(client, "gate_view", {"gate": "form-cancel"})
    response = client.post(reverse("gate_view:cancel", kwargs={"pk": pk}))
    assert response.status_code == 303
    assert wait_finished(pk).status == "cancelled"


def test_cancel_of_a_finished_action_answers_409(client: Client, runner: Any) -> None:
    pk = start(client)
    wait_finished(pk)
    response = client.post(
        reverse("echo_view:cancel", kwargs={"pk": pk}), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 409
    assert response.json() == {"status": "action_completed"}


def test_cancel_needs_post_and_a_csrf_token(runner: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.get(reverse("echo_view:initial"))
    token = client.cookies["csrftoken"].value
    gate("csrf").clear()
    response = client.post(
        reverse("gate_view:initial"), {"gate": "csrf", "csrfmiddlewaretoken": token}
    )
    pk = action_id_from(response)
    url = reverse("gate_view:cancel", kwargs={"pk": pk})
    try:
        assert client.get(url).status_code == 405
        assert client.post(url).status_code == 403
        assert client.post(url, HTTP_X_CSRFTOKEN=token).status_code == 303
    finally:
        gate("csrf").set()
    assert wait_finished(pk).status in ("cancelled", "succeeded")


def test_form_errors_rerender_the_form_without_an_action(client: Client) -> None:
    response = client.post(reverse("upload_view:initial"), {"count": "eleven"})
    assert response.status_code == 400
    assert response.context["form"].errors["count"]
    assert b"aa-error" in response.content
    assert Action.objects.count() == 0


def test_form_data_reaches_run_as_json_with_uploads_as_stored_files(
    client: Client, runner: Any, settings: Any, tmp_path: Any
) -> None:
    settings.MEDIA_ROOT = str(tmp_path)
    upload = SimpleUploadedFile("rows.csv", b"a,b\n1,2\n", content_type="text/csv")
    response = client.post(
        reverse("upload_view:initial"), {"count": "3", "when": "2024-02-29", "upload": upload}
    )
    assert response.status_code == 303
    action = wait_finished(action_id_from(response))
    assert action.status == "succeeded", action.traceback
    path = f"async_actions/{action.pk}/input/rows.csv"
    assert action.request == {"count": 3, "when": "2024-02-29", "upload": {"$file": path}}
    assert action.response == {
        "count": 3,
        "when": "2024-02-29",
        "name": "rows.csv",
        "size": 8,
        "content_type": "text/csv",
        "content": "a,b\n1,2\n",
    }
    assert (tmp_path / path).read_bytes() == b"a,b\n1,2\n"


def test_a_worker_finds_the_view_by_its_dotted_path() -> None:
    name = GateView.handler_name()
    unregister(name)
    found = get_handler(name)
    assert found is not None and found.name == name
    assert found.public is False
    assert get_handler(name, import_paths=False) is found


def test_shutdown_answers_503_with_retry_after(client: Client, runner: Any) -> None:
    runner.accepting = False
    response = client.post(reverse("echo_view:initial"), {"word": "x"})
    assert response.status_code == 503
    assert response["Retry-After"]
    assert b"try again" in response.content.lower()
    assert Action.objects.count() == 0


def test_database_failure_answers_503_not_500(
    client: Client, runner: Any, monkeypatch: Any
) -> None:
    with failing_action_inserts():
        response = client.post(reverse("echo_view:initial"), {"word": "x"})
    assert response.status_code == 503
    assert response["Retry-After"]
    assert b"disk I/O" not in response.content


def test_too_many_active_actions_answer_429(client: Client, runner: Any, settings: Any) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_ACTIVE_PER_OWNER": 1}
    gate("limit").clear()
    pk = start(client, "gate_view", {"gate": "limit"})
    try:
        response = client.post(reverse("gate_view:initial"), {"gate": "limit"})
        assert response.status_code == 429
        assert response["Retry-After"]
    finally:
        gate("limit").set()
    wait_finished(pk)


def test_bad_uuid_in_url_is_404(client: Client) -> None:
    assert client.get("/t/echo/status/not-a-uuid/").status_code == 404


def test_view_declares_capabilities_like_a_handler(runner: Any) -> None:
    from async_actions.handlers import get_handler
    from tests.views import ExclusiveView

    view_handler = get_handler(ExclusiveView.handler_name())
    assert view_handler is not None
    assert view_handler.get_concurrency_key({}) == "tests.exclusive-view"
    assert view_handler.on_busy == "refuse"
    assert view_handler.get_time_limit() == 120


def test_start_while_the_key_is_busy_shows_a_readable_409(client: Client, runner: Any) -> None:
    first = start(client, "exclusive_view", {"gate": "exclusive"})
    wait_for(lambda: Action.objects.filter(pk=first, status="running").exists())
    response = client.post(reverse("exclusive_view:initial"), {"gate": "exclusive"})
    assert response.status_code == 409
    assert "already running" in response.content.decode()
    assert Action.objects.count() == 1
    gate("exclusive").set()
    assert wait_finished(first).status == "succeeded"


def test_a_request_over_max_request_bytes_answers_413_and_stores_nothing(
    client: Client, runner: Any, settings: Any
) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_REQUEST_BYTES": 1000}
    response = client.post(reverse("echo_view:initial"), {"word": "x" * 5000})
    assert response.status_code == 413
    assert b"Traceback" not in response.content
    assert Action.objects.count() == 0


def test_urls_mount_one_small_view_per_action_page() -> None:
    patterns, namespace = EchoView.urls()
    views = {p.name: p.callback.view_class for p in patterns}  # type: ignore[attr-defined]
    assert namespace == "echo_view"
    assert views == {
        "initial": EchoView,
        "processing": ProcessingPage,
        "result": ResultPage,
        "status": StatusPage,
        "cancel": CancelPage,
        "file": FilePage,
    }
    # Each page calls back into the user's class for its hooks and templates.
    for pattern in patterns[1:]:
        assert pattern.callback.view_initkwargs["view_class"] is EchoView  # type: ignore[attr-defined]


def test_a_mixin_on_the_users_view_class_guards_every_action_page(
    client: Client, make_user: Any, runner: Any
) -> None:
    """LoginRequiredMixin on the view class holds for the action pages too, not only the
    start page: each page goes through the class's own dispatch."""
    alice = make_user("alice")
    client.force_login(alice)
    pk = start(client, "members_only_view")
    wait_finished(pk)
    stranger = Client()
    for page in ("initial", "processing", "result", "status", "cancel"):
        url = reverse(f"members_only_view:{page}", kwargs=None if page == "initial" else {"pk": pk})
        answer = stranger.post(url) if page == "cancel" else stranger.get(url)
        assert answer.status_code == 302, page
        assert answer["Location"].startswith(reverse("login")), page
    for page in ("result", "status"):
        assert (
            client.get(reverse(f"members_only_view:{page}", kwargs={"pk": pk})).status_code == 200
        )


HTMX = {"HTTP_HX_REQUEST": "true"}


def test_a_start_posted_by_htmx_answers_hx_redirect_to_the_processing_page(
    client: Client, runner: Any
) -> None:
    """htmx's request would follow a 303 and swap the whole processing page into the
    form's element; HX-Redirect makes the browser load it as a page."""
    response = client.post(reverse("echo_view:initial"), {"word": "hi"}, **HTMX)
    assert response.status_code == 200
    assert "Location" not in response
    target = response["HX-Redirect"]
    pk = re.search(r"[0-9a-f-]{36}", target).group(0)
    assert target == reverse("echo_view:processing", kwargs={"pk": pk})
    assert "HX-Request" in response["Vary"]
    assert wait_finished(pk).response == {"echo": {"word": "hi"}}


def test_a_cancel_posted_by_htmx_answers_hx_redirect(client: Client, runner: Any) -> None:
    gate("htmx-cancel").clear()
    pk = start(client, "gate_view", {"gate": "htmx-cancel"})
    response = client.post(reverse("gate_view:cancel", kwargs={"pk": pk}), **HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"] in (
        reverse("gate_view:processing", kwargs={"pk": pk}),
        reverse("gate_view:result", kwargs={"pk": pk}),
    )
    assert wait_finished(pk).status == "cancelled"


def test_a_boosted_form_and_a_plain_one_still_get_303(client: Client, runner: Any) -> None:
    """hx-boost swaps the body and takes the response's URL, so a 303 is right there."""
    boosted = client.post(
        reverse("echo_view:initial"), {"word": "hi"}, HTTP_HX_BOOSTED="true", **HTMX
    )
    plain = client.post(reverse("echo_view:initial"), {"word": "hi"}, HTTP_HX_REQUEST="false")
    for response in (boosted, plain):
        assert response.status_code == 303
        assert "HX-Redirect" not in response
        wait_finished(action_id_from(response))
