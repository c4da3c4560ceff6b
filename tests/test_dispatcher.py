"""Lower layers dispatch without importing the runners; a runner passes itself down."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from django.utils import timezone

import async_actions
from async_actions import concurrency, dispatcher, executor, service
from async_actions.models import Action
from async_actions.runners import get_runner

PACKAGE = Path(async_actions.__file__).parent
#: Modules below the runners' layer, and recovery (beside them): none looks a runner up.
BELOW_RUNNERS = ("executor", "retries", "concurrency", "fairness", "recovery", "lifecycle")


class Fake:
    """A dispatcher that records what it was asked."""

    def __init__(self) -> None:
        self.now: list[UUID] = []
        self.later: list[tuple[UUID, datetime]] = []

    def dispatch(self, action_id: UUID) -> None:
        self.now.append(action_id)

    def dispatch_at(self, action_id: UUID, when: datetime) -> None:
        self.later.append((action_id, when))

    def holds(self, action_ids: Any) -> set[UUID]:
        return set()


def test_the_runners_package_installs_the_process_runner_as_dispatcher() -> None:
    assert dispatcher.current() is get_runner()


@pytest.mark.parametrize("module", BELOW_RUNNERS)
def test_no_module_below_the_runners_imports_them(module: str) -> None:
    source = (PACKAGE / f"{module}.py").read_text()
    assert not re.search(r"^\s*(from|import) async_actions\.runners", source, re.M)


def test_without_a_provider_current_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "_provider", None)
    with pytest.raises(RuntimeError, match="INSTALLED_APPS"):
        dispatcher.current()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("recording")
def test_an_early_delivery_is_dispatched_again_on_the_runner_that_delivered_it() -> None:
    pk = service.start("tests.echo", session_key="s").action.pk
    due = timezone.now() + timedelta(minutes=5)
    Action.objects.filter(pk=pk).update(run_after=due)
    fake = Fake()
    assert executor.execute(pk, runner=fake) is None
    assert fake.later == [(pk, due)]
    assert Action.objects.get(pk=pk).status == "pending"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("recording")
def test_a_released_key_wakes_its_waiter_through_the_dispatcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Fake()
    monkeypatch.setattr(dispatcher, "_provider", lambda: fake)
    pk = service.start("tests.echo", session_key="s").action.pk
    Action.objects.filter(pk=pk).update(concurrency_key="k")
    concurrency.release("k")
    assert fake.now == [pk]
