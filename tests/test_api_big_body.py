"""A body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` from a logged-in browser session is a 413
JSON answer like any oversize API body. Before (1983d58), the session's CSRF check met
the body first: Django's HTML 400 page and a logged traceback, under daphne and in
process alike.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from async_actions.models import Action

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("megabytes", [3, 10])
def test_a_session_clients_oversize_body_answers_413_json(megabytes: int) -> None:
    user = get_user_model().objects.create_user("alice", password="pw")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = "a" * 32  # a well-formed CSRF secret, sent back below
    body = json.dumps({"handler": "tests.echo", "request": {"a": "x" * megabytes * 1_000_000}})
    response = client.post(
        "/api/actions/",
        body,
        content_type="application/json",
        HTTP_X_CSRFTOKEN="a" * 32,
    )
    assert response.status_code == 413, response.content[:200]
    assert response["Content-Type"].startswith("application/json")
    assert not Action.objects.exists()
