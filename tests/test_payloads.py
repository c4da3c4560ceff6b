"""Payload rules: only JSON every database can store reaches an action's row."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from async_actions import service
from async_actions.models import Action
from async_actions.payloads import PayloadError, check_payload, clean_text
from tests.helpers import wait_for


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"a": "nul\x00here"}, "NUL"),
        ({"key\x00": 1}, "NUL"),
        (["\udc80"], "unpaired surrogate"),
        ({"x": float("nan")}, "JSON-serializable"),
        ({"x": object()}, "JSON-serializable"),
        ({1, 2}, "JSON-serializable"),
    ],
)
def test_values_a_database_cannot_store_are_refused_with_the_reason(value: Any, reason: str):
    with pytest.raises(PayloadError, match=reason):
        check_payload(value, "The thing")


def test_payload_error_is_both_a_type_error_and_a_value_error():
    assert issubclass(PayloadError, TypeError) and issubclass(PayloadError, ValueError)


def test_oversize_payload_names_the_setting():
    with pytest.raises(PayloadError, match=r"limit is 10 \(ASYNC_ACTIONS\['X'\]\)"):
        check_payload("a" * 50, "Data", limit=10, setting="X")


def test_clean_text_replaces_what_cannot_be_stored():
    assert clean_text("a\x00b\udc80c") == "a\ufffdb?c"
    assert clean_text("plain", 3) == "pla"


@pytest.mark.django_db
def test_start_refuses_a_nul_in_the_request_and_stores_nothing():
    with pytest.raises(PayloadError, match="NUL"):
        service.start("tests.echo", {"name": "a\x00"})
    assert not Action.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_nul_in_a_progress_message_or_error_is_stored_replaced(runner: Any):
    result = service.start("tests.wait", {"gate": "payload-nul"})
    assert result.action is not None
    pk = result.action.pk
    wait_for(lambda: Action.objects.filter(pk=pk, status="running").exists())
    assert service.fail(pk, "bad\x00error") is service.OpStatus.OK
    assert Action.objects.get(pk=pk).error == "bad\ufffderror"


@pytest.mark.django_db(transaction=True)
def test_view_answers_400_for_a_request_with_a_nul_character(runner: Any):
    response = Client().post(reverse("echo_view:initial"), {"word": "a\x00b"})
    assert response.status_code == 400
    assert "NUL" in response.content.decode()
    assert not Action.objects.exists()
