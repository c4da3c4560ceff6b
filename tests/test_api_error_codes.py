"""docs/api.md's error table is what the API answers: every documented ``code``, produced
by a real request, with the documented status; and no producer here for a code the
docs do not list."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client, override_settings
from rest_framework.test import APIClient

from async_actions.models import Action
from tests import capability_actions  # noqa: F401  (registers caps.* handlers)
from tests.helpers import failing_action_inserts

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/actions/"
DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def documented_codes() -> dict[str, int]:
    """``code`` to HTTP status, from the table under "## Errors" in docs/api.md."""
    section = DOC.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    codes: dict[str, int] = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].isdigit():
            continue
        for code in re.findall(r"`([a-z_]+)`", cells[2]):
            codes[code] = int(cells[0])
    return codes


def _user(name: str = "alice", *perms: str) -> Any:
    user = get_user_model().objects.create_user(name, password="pw")
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def _api(user: Any = None) -> APIClient:
    client = APIClient()
    client.force_authenticate(user or _user())
    return client


def _post(client: Any, body: Any) -> Any:
    return client.post(URL, json.dumps(body), content_type="application/json")


def parse_error(runner: Any, monkeypatch: Any) -> Any:
    return _api().post(URL, "{not json", content_type="application/json")


def too_deep(runner: Any, monkeypatch: Any) -> Any:
    nested: Any = 0
    for _ in range(100):  # far past MAX_JSON_DEPTH
        nested = [nested]
    return _post(_api(), {"handler": "tests.echo", "request": nested})


def invalid(runner: Any, monkeypatch: Any) -> Any:
    return _post(_api(), {"handler": "tests.echo", "idempotency_key": "k" * 300})


def invalid_request(runner: Any, monkeypatch: Any) -> Any:
    return _post(_api(), {"handler": "tests.echo", "request": {"nul": "a\x00b"}})


def invalid_filter(runner: Any, monkeypatch: Any) -> Any:
    return _api().get(URL, {"status": "sleeping"})


def no_handler(runner: Any, monkeypatch: Any) -> Any:
    return _post(_api(), {"handler": "no.such.handler"})


def not_authenticated(runner: Any, monkeypatch: Any) -> Any:
    return APIClient().get(URL)


def authentication_failed(runner: Any, monkeypatch: Any) -> Any:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    return client.get(URL)


def permission_denied(runner: Any, monkeypatch: Any) -> Any:
    owner = _user("owner")
    action = Action.objects.create(handler="tests.echo", user=owner, status="running")
    watcher = _user("watcher", "view_action")  # may see every action, not cancel it
    return _api(watcher).post(f"{URL}{action.pk}/cancel/")


def not_found(runner: Any, monkeypatch: Any) -> Any:
    return _api().get(f"{URL}{uuid.uuid4()}/")


def method_not_allowed(runner: Any, monkeypatch: Any) -> Any:
    user = _user()
    action = Action.objects.create(handler="tests.echo", user=user)
    return _api(user).delete(f"{URL}{action.pk}/")


def finished(runner: Any, monkeypatch: Any) -> Any:
    user = _user()
    action = Action.objects.create(handler="tests.echo", user=user, status="cancelled")
    response = _api(user).post(f"{URL}{action.pk}/cancel/")
    assert response.json()["detail"] == "The action was already cancelled."
    return response


def busy(runner: Any, monkeypatch: Any) -> Any:
    Action.objects.create(
        handler="caps.import_refuse", status="running", concurrency_key="site-import"
    )
    return _post(_api(), {"handler": "caps.import_refuse", "request": {"hold": 0}})


@override_settings(ASYNC_ACTIONS={"MAX_REQUEST_BYTES": 1000})
def too_large(runner: Any, monkeypatch: Any) -> Any:
    return _post(_api(), {"handler": "tests.echo", "request": {"blob": "x" * 2000}})


def unsupported_media_type(runner: Any, monkeypatch: Any) -> Any:
    return _api().post(URL, {"handler": "tests.echo"})  # a form body


@override_settings(ASYNC_ACTIONS={"MAX_ACTIVE_PER_OWNER": 1})
def limit_reached(runner: Any, monkeypatch: Any) -> Any:
    user = _user()
    Action.objects.create(handler="tests.echo", user=user, status="running")
    return _post(_api(user), {"handler": "tests.echo"})


def shutdown(runner: Any, monkeypatch: Any) -> Any:
    runner.shutdown(timeout=1)
    return _post(_api(), {"handler": "tests.echo"})


def unavailable(runner: Any, monkeypatch: Any) -> Any:
    client = _api()
    with failing_action_inserts():
        return _post(client, {"handler": "tests.echo"})


PRODUCERS: dict[str, Callable[[Any, Any], Any]] = {
    f.__name__: f
    for f in (
        parse_error,
        too_deep,
        invalid,
        invalid_request,
        invalid_filter,
        no_handler,
        not_authenticated,
        authentication_failed,
        permission_denied,
        not_found,
        method_not_allowed,
        finished,
        busy,
        too_large,
        unsupported_media_type,
        limit_reached,
        shutdown,
        unavailable,
    )
}


def test_every_documented_code_has_a_producer_and_no_other():
    assert set(documented_codes()) == set(PRODUCERS)


@pytest.mark.parametrize(("code", "status"), sorted(documented_codes().items()))
def test_the_api_answers_the_documented_code(code: str, status: int, runner: Any, monkeypatch: Any):
    response = PRODUCERS[code](runner, monkeypatch)
    body = response.json()
    assert (response.status_code, body.get("code")) == (status, code), body
    assert isinstance(body["detail"], str) and body["detail"]


def test_a_csrf_refusal_names_its_code(runner: Any):
    _user()
    browser = Client(enforce_csrf_checks=True)
    browser.login(username="alice", password="pw")
    refused = browser.post(
        URL, json.dumps({"handler": "tests.echo"}), content_type="application/json"
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")


def test_a_page_past_the_end_names_its_code(runner: Any):
    response = _api().get(URL, {"page": 9})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
