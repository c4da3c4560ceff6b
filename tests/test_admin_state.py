"""Operators cannot run an action twice or lose a running one from the admin.

Before this (1983d58), "Retry selected" on a running action started a copy beside it,
one more per click, and "Delete selected" or the delete page removed a running action's
row while its handler went on, untracked and beyond cancel.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from async_actions import service
from async_actions.models import Action
from tests.actions import gate
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db

LIST = "/admin/async_actions/action/"


def _running(name: str) -> Action:
    action = service.start("tests.wait", {"gate": name}).action
    wait_for(lambda: Action.objects.get(pk=action.pk).status == "running")
    return action


def test_retry_of_an_unfinished_action_is_refused(staff: Client, runner: Any) -> None:
    running = _running("admin-retry-running")
    pending = Action.objects.create(handler="tests.echo")  # no runner holds it
    try:
        for _ in range(3):
            page = staff.post(
                LIST,
                {"action": "retry_selected", "_selected_action": [running.pk, pending.pk]},
                follow=True,
            )
            assert page.status_code == 200
            assert "Not retried" in page.content.decode()
        assert not Action.objects.filter(retry_of__in=[running.pk, pending.pk]).exists()
    finally:
        gate("admin-retry-running").set()


def test_retrying_a_finished_action_twice_starts_one_retry(staff: Client, runner: Any) -> None:
    original = Action.objects.create(handler="tests.wait", request={"gate": "admin-retry-twice"})
    Action.objects.filter(pk=original.pk).update(status="failed")
    try:
        for _ in range(3):
            staff.post(LIST, {"action": "retry_selected", "_selected_action": [original.pk]})
        assert Action.objects.filter(retry_of=original).count() == 1
    finally:
        gate("admin-retry-twice").set()
    retry = Action.objects.get(retry_of=original)
    wait_for(lambda: Action.objects.get(pk=retry.pk).status == "succeeded")
    # once that retry has ended, a new retry may start
    staff.post(LIST, {"action": "retry_selected", "_selected_action": [original.pk]})
    assert Action.objects.filter(retry_of=original).count() == 2


def test_an_unfinished_action_cannot_be_deleted(staff: Client, runner: Any) -> None:
    running = _running("admin-delete-running")
    pending = Action.objects.create(handler="tests.echo")
    done = Action.objects.create(handler="tests.echo", status="succeeded")
    try:
        staff.post(
            LIST,
            {
                "action": "delete_selected",
                "_selected_action": [running.pk, pending.pk, done.pk],
                "post": "yes",
            },
        )
        for action in (running, pending):
            assert staff.post(f"{LIST}{action.pk}/delete/", {"post": "yes"}).status_code == 403
        # Django refuses the whole selection when one object may not be deleted
        assert Action.objects.filter(pk__in=[running.pk, pending.pk, done.pk]).count() == 3
        staff.post(
            LIST, {"action": "delete_selected", "_selected_action": [done.pk], "post": "yes"}
        )
        assert set(Action.objects.values_list("pk", flat=True)) == {running.pk, pending.pk}
    finally:
        gate("admin-delete-running").set()
    wait_for(lambda: Action.objects.get(pk=running.pk).status == "succeeded")
    # finished, it may go
    assert staff.post(f"{LIST}{running.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Action.objects.filter(pk=running.pk).exists()
