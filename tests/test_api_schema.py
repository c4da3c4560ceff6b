"""The OpenAPI schema is one include away: ``async_actions.api.urls`` serves it (item 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import include, path
from drf_spectacular.validation import validate_schema

pytestmark = pytest.mark.django_db

ENDPOINTS = {
    "/actions/": {"get", "post"},
    "/actions/{id}/": {"get"},
    "/actions/{id}/cancel/": {"post"},
    "/actions/{id}/log/": {"get"},
    "/actions/{id}/files/{file_id}/": {"get"},
}

#: A site that mounts the API under its own prefix and configures nothing for schemas.
urlpatterns = [path("v2/", include("async_actions.api.urls"))]


def schema(client: Client, url: str) -> dict[str, Any]:
    response = client.get(url, {"format": "json"})
    assert response.status_code == 200, response.content[:500]
    document = json.loads(response.content)
    validate_schema(document)  # a valid OpenAPI 3 document
    return document


def operations(document: dict[str, Any], prefix: str) -> dict[str, set[str]]:
    return {
        route.removeprefix(prefix): set(methods) - {"parameters"}
        for route, methods in document["paths"].items()
    }


def test_the_included_api_serves_a_valid_schema_of_its_endpoints(client: Client) -> None:
    document = schema(client, "/api/schema/")
    assert operations(document, "/api") == ENDPOINTS  # the demo's other URLs are not in it
    start = document["paths"]["/api/actions/"]["post"]
    assert {"201", "400", "429", "503"} <= set(start["responses"])


@override_settings(ROOT_URLCONF=__name__, REST_FRAMEWORK={})
def test_the_schema_follows_the_sites_prefix_without_schema_settings(client: Client) -> None:
    document = schema(client, "/v2/schema/")
    assert operations(document, "/v2") == ENDPOINTS
    # the actual endpoints are where the schema says
    assert client.get("/v2/actions/").status_code in (401, 403)


def test_the_schema_is_yaml_by_default(client: Client) -> None:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert b"/api/actions/{id}/cancel/:" in response.content


def test_the_schema_is_served_when_the_site_keeps_drfs_default_schema_class() -> None:
    """docs/api.md: no ``DEFAULT_SCHEMA_CLASS`` needed. The setting is read when the API
    module is imported, so the site's settings are those of a fresh process."""
    script = (
        "import json, django; django.setup()\n"
        "from django.test import Client\n"
        "from django.test.utils import setup_test_environment\n"
        "setup_test_environment()\n"
        "response = Client().get('/api/schema/', {'format': 'json'})\n"
        "print(response.status_code)\n"
        "print(sorted(json.loads(response.content)['paths']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_drf_defaults"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    status, paths = done.stdout.splitlines()[-2:]
    assert status == "200"
    assert "/api/actions/{id}/cancel/" in paths
