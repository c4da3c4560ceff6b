"""Schemathesis against the example project's live API (daphne, token-authenticated).

Every operation in the published OpenAPI schema gets generated requests, valid and
invalid; a 5xx, an undocumented status code or a body that breaks the schema fails.
A schema-valid start may still be refused with 400 (an unknown handler name is valid
JSON), so the "positive data is accepted" check is the one left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.servers import Server, daphne, manage, sqlite_env

pytestmark = pytest.mark.slow

CREATE_TOKEN = (
    "from django.contrib.auth import get_user_model; "
    "from rest_framework.authtoken.models import Token; "
    "user = get_user_model().objects.create_user('fuzz', password='pw'); "
    "print(Token.objects.create(user=user).key)"
)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    env = sqlite_env(tmp)
    manage(env, "migrate", "--noinput", "-v0")
    token = manage(env, "shell", "-c", CREATE_TOKEN).strip().splitlines()[-1]
    with daphne(env, tmp / "daphne.log", migrate=False) as server:
        yield server, token


def test_api_answers_every_generated_request_within_its_schema(
    live_api: tuple[Server, str],
) -> None:
    server, token = live_api
    schema = schemathesis.openapi.from_url(f"{server.base}/api/schema/")
    headers = {"Authorization": f"Token {token}"}
    tried: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        tried.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                headers=headers, timeout=30, excluded_checks=[positive_data_acceptance]
            )

        fuzz()
    assert len(tried) == 6, tried  # list, create, detail, cancel, log, file
    print(f"schemathesis: {calls} generated requests over {len(tried)} operations, no failure")
    assert "Traceback" not in server.log()
