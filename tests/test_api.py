"""The REST API: list, retrieve, start, cancel, log; status codes; ownership; auth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import DatabaseError, connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from async_actions.models import Action, ActionQuerySet
from tests import capability_actions  # noqa: F401  (registers caps.* handlers)
from tests.actions import gate
from tests.helpers import failing_action_inserts, wait_finished, wait_for

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)

URL = "/api/actions/"


def make_user(name: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(name, password="pw", **extra)


@pytest.fixture
def alice() -> Any:
    return make_user("alice")


@pytest.fixture
def api(alice: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(alice)
    return client


def as_user(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def post(client: APIClient, body: Any, **extra: Any) -> Any:
    return client.post(URL, json.dumps(body), content_type="application/json", **extra)


def test_create_starts_the_action_and_answers_201_with_location(api: APIClient, runner: Any):
    response = post(api, {"handler": "tests.echo", "request": {"x": 1}})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["handler"] == "tests.echo"
    assert body["status"] in ("pending", "running", "succeeded")
    assert response["Location"].endswith(f"{URL}{body['id']}/")
    assert wait_finished(body["id"]).response == {"echo": {"x": 1}}
    shown = api.get(f"{URL}{body['id']}/").json()
    assert shown["status"] == "succeeded"
    assert shown["response"] == {"echo": {"x": 1}}
    assert shown["owner"] == "alice"
    assert shown["attempt"] == 1


def test_idempotent_repeat_returns_the_same_action_with_200(api: APIClient, runner: Any):
    gate("api-idem").clear()
    body = {"handler": "tests.wait", "request": {"gate": "api-idem"}, "idempotency_key": "k1"}
    first = post(api, body)
    again = post(api, body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert Action.objects.count() == 1
    gate("api-idem").set()
    wait_finished(first.json()["id"])


def test_an_idempotency_key_reused_for_other_work_answers_422(api: APIClient, runner: Any):
    gate("api-idem-reuse").clear()
    body = {"handler": "tests.wait", "request": {"gate": "api-idem-reuse"}, "idempotency_key": "k2"}
    first = post(api, body)
    reused = post(api, {**body, "request": {"gate": "api-idem-reuse", "more": 1}})
    assert (first.status_code, reused.status_code) == (201, 422)
    assert reused.json()["code"] == "key_reused"
    assert "idempotency key" in reused.json()["detail"]
    assert Action.objects.count() == 1
    gate("api-idem-reuse").set()
    wait_finished(first.json()["id"])


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"handler": "no.such.handler"}, "No public handler is named 'no.such.handler'"),
        ({"request": {"nobody": "accepts"}}, "No handler accepts this request"),
        ({"handler": "tests.add"}, "No public handler"),  # perform()-only, not public by name
        ({"handler": ["tests.echo"]}, "Not a valid string"),
        ({"handler": "tests.echo", "idempotency_key": "k" * 300}, "no more than 255"),
        ({"handler": "tests.echo", "request": {"nul": "a\x00b"}}, "NUL"),
    ],
)
def test_bad_bodies_answer_400_with_a_readable_detail(
    api: APIClient, runner: Any, body: Any, fragment: str
) -> None:
    response = post(api, body)
    assert response.status_code == 400, response.content
    assert fragment in json.dumps(response.json(), ensure_ascii=False).replace("\\u0000", "NUL")
    assert Action.objects.count() == 0


def test_malformed_json_answers_400(api: APIClient) -> None:
    response = api.post(URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


@override_settings(ASYNC_ACTIONS={"MAX_REQUEST_BYTES": 1000})
def test_oversize_request_answers_413(api: APIClient, runner: Any) -> None:
    response = post(api, {"handler": "tests.echo", "request": {"blob": "x" * 2000}})
    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES" in response.json()["detail"]
    huge = post(api, {"handler": "tests.echo", "request": {"blob": "x" * 10_000}})
    assert huge.status_code == 413
    assert Action.objects.count() == 0


def test_busy_key_answers_409(api: APIClient, runner: Any) -> None:
    first = post(api, {"handler": "caps.import_refuse", "request": {"gate": "api-busy"}})
    assert first.status_code == 201
    second = post(api, {"handler": "caps.import_refuse", "request": {"hold": 0}})
    assert second.status_code == 409
    assert second.json()["code"] == "busy"
    gate("api-busy").set()
    wait_finished(first.json()["id"])


@override_settings(ASYNC_ACTIONS={"MAX_ACTIVE_PER_OWNER": 1, "RUN_WITHOUT_STARTUP": True})
def test_limit_of_active_actions_answers_429_with_retry_after(api: APIClient, runner: Any):
    gate("api-limit").clear()
    first = post(api, {"handler": "tests.wait", "request": {"gate": "api-limit"}})
    second = post(api, {"handler": "tests.echo"})
    assert (first.status_code, second.status_code) == (201, 429)
    assert second["Retry-After"]
    assert "Wait for one to finish" in second.json()["detail"]
    gate("api-limit").set()
    wait_finished(first.json()["id"])


def test_shutdown_answers_503_with_retry_after(api: APIClient, runner: Any) -> None:
    runner.shutdown(timeout=1)
    response = post(api, {"handler": "tests.echo"})
    assert response.status_code == 503
    assert response["Retry-After"]
    assert "restarting" in response.json()["detail"]


def test_database_failure_answers_503_json(api: APIClient, runner: Any, monkeypatch: Any):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseError("disk I/O error")

    with failing_action_inserts():
        response = post(api, {"handler": "tests.echo"})
    assert response.status_code == 503
    assert response["Retry-After"]
    assert "disk" not in response.content.decode()
    monkeypatch.setattr(ActionQuerySet, "owned_by", broken)
    listing = api.get(URL)
    assert listing.status_code == 503
    assert listing.json()["detail"]


def test_cancel_running_answers_202_and_finished_answers_409(api: APIClient, runner: Any):
    started = post(api, {"handler": "tests.wait", "request": {"gate": "api-cancel"}}).json()
    wait_for(lambda: Action.objects.get(pk=started["id"]).status == "running")
    response = api.post(f"{URL}{started['id']}/cancel/")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    assert wait_finished(started["id"]).status == "cancelled"
    again = api.post(f"{URL}{started['id']}/cancel/")
    assert again.status_code == 409
    assert again.json()["detail"] == "The action was already cancelled."


def test_log_returns_the_kept_records(api: APIClient, runner: Any) -> None:
    started = post(api, {"handler": "tests.logs", "request": {"count": 3}}).json()
    wait_finished(started["id"])
    response = api.get(f"{URL}{started['id']}/log/")
    assert response.status_code == 200
    messages = [entry["message"] for entry in response.json()["log"]]
    assert messages == ["line 0", "line 1", "line 2"]


@pytest.mark.parametrize("suffix", ["", "cancel/", "log/"])
@pytest.mark.parametrize("pk", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_unknown_and_malformed_ids_answer_404_json(api: APIClient, pk: str, suffix: str):
    method = api.post if suffix == "cancel/" else api.get
    response = method(f"{URL}{pk}/{suffix}")
    assert response.status_code == 404
    assert response.json()["detail"] == "No such action."


def test_other_users_actions_are_404_and_not_listed(api: APIClient, runner: Any) -> None:
    mine = post(api, {"handler": "tests.echo"}).json()
    bob = as_user(make_user("bob"))
    for method, suffix in [(bob.get, ""), (bob.post, "cancel/"), (bob.get, "log/")]:
        assert method(f"{URL}{mine['id']}/{suffix}").status_code == 404
    assert bob.get(URL).json()["count"] == 0
    wait_finished(mine["id"])
    assert Action.objects.get(pk=mine["id"]).status == "succeeded"


def test_staff_with_view_permission_see_every_action_and_the_traceback(
    api: APIClient, runner: Any
) -> None:
    failing = post(api, {"handler": "tests.boom"}).json()
    wait_finished(failing["id"])
    own = api.get(f"{URL}{failing['id']}/").json()
    assert own["status"] == "failed"
    assert own["error"] and own["traceback"] == ""
    bare = as_user(make_user("bare", is_staff=True))  # is_staff alone grants nothing
    assert bare.get(f"{URL}{failing['id']}/").status_code == 404
    root = make_user("root", is_staff=True)
    root.user_permissions.add(
        Permission.objects.get(content_type__app_label="async_actions", codename="view_action")
    )
    staff = as_user(root)
    seen = staff.get(f"{URL}{failing['id']}/").json()
    assert "Traceback" in seen["traceback"]
    assert staff.get(URL).json()["count"] == 1


def test_list_filters_by_status_and_handler_and_paginates(api: APIClient, alice: Any) -> None:
    for _ in range(7):
        Action.objects.create(handler="tests.echo", user=alice, status="succeeded")
    for _ in range(3):
        Action.objects.create(handler="tests.boom", user=alice, status="failed")
    assert api.get(URL).json()["count"] == 10
    assert api.get(URL, {"status": "failed"}).json()["count"] == 3
    assert api.get(URL, {"status": "failed,succeeded"}).json()["count"] == 10
    assert api.get(URL, {"handler": "tests.echo"}).json()["count"] == 7
    page = api.get(URL, {"page_size": 4, "page": 3}).json()
    assert len(page["results"]) == 2 and page["next"] is None
    bad = api.get(URL, {"status": "exploded"})
    assert bad.status_code == 400
    assert "Unknown status exploded" in bad.json()["detail"]
    assert api.get(URL, {"page": 99}).status_code == 404


def test_anonymous_requests_get_401_json(runner: Any) -> None:
    client = APIClient()
    response = post(client, {"handler": "tests.echo"})
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json()["detail"]
    assert client.get(URL).status_code == 401
    assert Action.objects.count() == 0


def test_token_authentication_works(alice: Any, runner: Any) -> None:
    token = Token.objects.create(user=alice)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = post(client, {"handler": "tests.echo"})
    assert response.status_code == 201
    assert response.json()["owner"] == "alice"
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    assert client.get(URL).status_code == 401


def test_session_authentication_requires_csrf(alice: Any, runner: Any) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.login(username="alice", password="pw")
    body = json.dumps({"handler": "tests.echo"})
    refused = browser.post(URL, body, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert Action.objects.count() == 0
    browser.get("/accounts/login/")  # sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    accepted = browser.post(URL, body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 201
    assert browser.get(URL).json()["count"] == 1


def test_schema_documents_every_status_code(client: Client) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    create = paths["/api/actions/"]["post"]["responses"]
    assert {"200", "201", "400", "409", "413", "429", "503"} <= set(create)
    cancel = paths["/api/actions/{id}/cancel/"]["post"]["responses"]
    assert {"202", "404", "409", "503"} <= set(cancel)
    assert "200" in paths["/api/actions/{id}/log/"]["get"]["responses"]


def test_field_errors_come_with_one_readable_detail(api: APIClient) -> None:
    response = post(api, {"handler": None, "idempotency_key": 5.5, "request": {"a": 1}})
    body = response.json()
    assert response.status_code == 400
    assert body["detail"].startswith("Invalid body. handler: This field may not be null.")
    assert body["code"] == "invalid"
    assert set(body["errors"]) == {"handler"}


@pytest.mark.django_db
def test_the_serializer_built_once_gives_each_action_its_own_fields() -> None:
    """ActionSerializer builds its fields from the model once and copies them: each use
    still gets fresh fields bound to it, and the same output as a fresh build."""
    from rest_framework import serializers

    from async_actions.api.serializers import ActionSerializer

    first = Action.objects.create(handler="tests.echo", message="one", percent=10)
    second = Action.objects.create(handler="tests.echo", message="two", status="failed")
    a, b = ActionSerializer(first), ActionSerializer(second)
    assert (a.data["message"], b.data["message"]) == ("one", "two")
    assert (a.data["status"], b.data["status"]) == ("pending", "failed")
    assert a.fields["message"] is not b.fields["message"]
    assert a.fields["message"].parent is a and b.fields["message"].parent is b

    class Fresh(ActionSerializer):
        def get_fields(self) -> dict[str, Any]:
            return serializers.ModelSerializer.get_fields(self)

    assert Fresh(first).data == ActionSerializer(first).data
    assert list(ActionSerializer(first).fields) == ActionSerializer.Meta.fields


def test_the_start_answers_with_the_action_as_created_without_reading_files(api: APIClient):
    with CaptureQueriesContext(connection) as queries:
        later = "2999-01-01T00:00:00Z"
        response = post(api, {"handler": "tests.echo", "request": {}, "run_after": later})
    assert response.status_code == 201, response.content
    assert response.json()["files"] == []
    assert response.json()["status"] == "pending"
    assert not [q for q in queries.captured_queries if "actionfile" in q["sql"]]
    # A later read asks for them as before.
    with CaptureQueriesContext(connection) as queries:
        assert api.get(f"{URL}{response.json()['id']}/").json()["files"] == []
    assert [q for q in queries.captured_queries if "actionfile" in q["sql"]]
