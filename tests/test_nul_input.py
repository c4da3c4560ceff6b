"""A NUL character in a query parameter is bad input: 400, never a 500 or a 503.

PostgreSQL cannot compare a text column with a string holding NUL (psycopg raises
``ValueError`` or ``DataError``), so before this ``GET /api/actions/?handler=a%00b``
answered 503 "unavailable" and the admin's list with ``?status=running%00`` a 500 with a
traceback. Run with ``AA_TEST_DB=postgres`` to see the failure on the previous main.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from async_actions.models import Action

pytestmark = pytest.mark.django_db

NUL_QUERIES = [
    "handler=a%00b",
    "handler=%00",
    "status=running%00",
    "status=%00",
    "page_size=1%00",
    "page=1%00",
    "other=%00",
    "a%00b=1",
    "handler=ok&handler=%00",
]

ADMIN_QUERIES = [
    "handler=a%00b",
    "handler__exact=%00",
    "status=running%00",
    "status__exact=%00",
    "created_at__gte=%00",
    "q=%00",
    "o=1%00",
    "p=%00",
    "a%00b=1",
]


def _client(username: str, **extra: Any) -> Client:
    user = get_user_model().objects.create_user(username, password="pw", **extra)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    Action.objects.create(handler="tests.noop", user=user)
    return client


@pytest.mark.parametrize("query", NUL_QUERIES)
def test_api_list_answers_400_to_a_nul_character_in_any_query_parameter(query: str) -> None:
    client = _client("alice")
    response = client.get(f"/api/actions/?{query}")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["code"] == "invalid_filter"
    assert client.get("/api/actions/").status_code == 200  # still serving


@pytest.mark.parametrize("query", ADMIN_QUERIES)
def test_admin_list_answers_400_to_a_nul_character_in_any_query_parameter(query: str) -> None:
    client = _client("boss", is_staff=True, is_superuser=True)
    response = client.get(f"/admin/async_actions/action/?{query}")
    assert response.status_code == 400, response.content[:300]
    assert client.get("/admin/async_actions/action/").status_code == 200
