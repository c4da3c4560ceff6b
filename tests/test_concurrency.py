"""Concurrency keys: one running action per key, guaranteed by the database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import IntegrityError, close_old_connections, transaction

from async_actions import executor, service
from async_actions.handlers import HandlerError, handler
from async_actions.models import Action
from tests import capability_actions as caps
from tests.actions import gate, gates
from tests.helpers import wait_finished, wait_for

pytestmark = pytest.mark.django_db  # `runner` makes a test transactional (docs/architecture.md)

RACE_ROUNDS = 30


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    caps.events.clear()
    gates.clear()
    yield
    for event in gates.values():
        event.set()


def status(pk: Any) -> str:
    return Action.objects.get(pk=pk).status


def max_overlap(events: list[Any], labels: set[str] | None = None) -> int:
    """The most handlers that were between enter and leave at one time."""
    inside = peak = 0
    for kind, label, *_ in events:
        if labels is not None and label not in labels:
            continue
        if kind == "enter":
            inside += 1
            peak = max(peak, inside)
        elif kind == "leave":
            inside -= 1
    return peak


def race(*calls: Any) -> list[Any]:
    """Run the calls in threads released together by a barrier; return their results."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Any) -> None:
        try:
            barrier.wait()
            results[i] = call()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_second_action_with_a_busy_key_waits_in_pending_then_runs(runner):
    first = service.start("caps.import_one", {"gate": "first"})
    wait_for(lambda: status(first.action.pk) == "running")
    second = service.start("caps.import_one", {"hold": 0})
    assert second.status is service.OpStatus.OK
    assert second.action.concurrency_key == "site-import"
    # Give the runner time to try (and fail) to claim it: it must stay pending.
    wait_for(lambda: runner.active_count == 1)
    assert status(second.action.pk) == "pending"
    gate("first").set()
    assert wait_finished(second.action.pk).status == "succeeded"
    assert status(first.action.pk) == "succeeded"
    assert max_overlap(caps.events) == 1


def test_waiting_actions_run_in_order_of_creation(runner):
    first = service.start("caps.import_one", {"gate": "holder"})
    wait_for(lambda: status(first.action.pk) == "running")
    waiting = [service.start("caps.import_one", {"hold": 0}) for _ in range(3)]
    gate("holder").set()
    for started in waiting:
        wait_finished(started.action.pk)
    # The order the handler bodies began in, as they recorded it: started_at is the
    # clock read before each claim's UPDATE, so on PostgreSQL a claim that waits for
    # its turn may carry an earlier reading than the one that ran before it.
    entered = [pk for kind, _, pk in caps.events if kind == "enter" and pk != str(first.action.pk)]
    assert entered == [str(s.action.pk) for s in waiting]


def test_refusing_handler_returns_busy_while_its_key_is_taken(runner):
    first = service.start("caps.import_refuse", {"gate": "refuse"})
    assert first.ok
    second = service.start("caps.import_refuse", {"hold": 0})
    assert second.status is service.OpStatus.BUSY
    assert second.action is None
    assert Action.objects.count() == 1
    gate("refuse").set()
    wait_finished(first.action.pk)
    assert service.start("caps.import_refuse", {"hold": 0}).ok


def test_refusing_handler_is_busy_when_a_waiting_handler_holds_the_shared_key(runner):
    holder = service.start("caps.import_one", {"gate": "shared"})
    wait_for(lambda: status(holder.action.pk) == "running")
    assert service.start("caps.import_refuse").status is service.OpStatus.BUSY


def test_key_from_the_request_lets_different_customers_run_together(runner):
    gate("acme").clear()
    a1 = service.start("caps.export_per_customer", {"customer": "acme", "gate": "acme"})
    b1 = service.start("caps.export_per_customer", {"customer": "bolt", "hold": 0})
    a2 = service.start("caps.export_per_customer", {"customer": "acme", "hold": 0})
    assert wait_finished(b1.action.pk).status == "succeeded"
    assert status(a2.action.pk) == "pending"
    assert a2.action.concurrency_key == "export:acme"
    gate("acme").set()
    assert wait_finished(a2.action.pk).status == "succeeded"
    assert status(a1.action.pk) == "succeeded"


def test_get_concurrency_key_returning_none_means_no_key(runner):
    started = service.start("caps.report_per_user", {"hold": 0})
    assert started.action.concurrency_key == ""
    keyed = service.start("caps.report_per_user", {"user": "ann", "hold": 0})
    assert keyed.action.concurrency_key == "report:ann"


def test_cancelling_a_waiting_action_does_not_strand_the_ones_behind_it(runner):
    holder = service.start("caps.import_one", {"gate": "strand"})
    wait_for(lambda: status(holder.action.pk) == "running")
    cancelled = service.start("caps.import_one", {"hold": 0})
    behind = service.start("caps.import_one", {"hold": 0})
    assert service.cancel(cancelled.action.pk) is service.OpStatus.OK
    gate("strand").set()
    assert wait_finished(behind.action.pk).status == "succeeded"
    assert status(cancelled.action.pk) == "cancelled"


def test_failing_the_holder_from_outside_frees_the_key(runner):
    holder = service.start("caps.import_one", {"gate": "outside"})
    wait_for(lambda: status(holder.action.pk) == "running")
    waiter = service.start("caps.import_one", {"hold": 0})
    assert service.fail(holder.action.pk, "Stopped by an operator") is service.OpStatus.OK
    assert wait_finished(waiter.action.pk).status == "succeeded"


def test_database_refuses_two_running_rows_with_one_key():
    a = Action.objects.create(handler="caps.import_one", concurrency_key="k", status="running")
    b = Action.objects.create(handler="caps.import_one", concurrency_key="k")
    other = Action.objects.create(handler="caps.import_one", concurrency_key="other")
    with pytest.raises(IntegrityError), transaction.atomic():
        Action.objects.filter(pk=b.pk).update(status="running")
    Action.objects.filter(pk=other.pk).update(status="running")  # another key is fine
    Action.objects.filter(pk=a.pk).update(status="succeeded")
    Action.objects.filter(pk=b.pk).update(status="running")  # the key is free again
    # Unkeyed actions are not limited.
    Action.objects.create(handler="tests.echo", status="running")
    Action.objects.create(handler="tests.echo", status="running")


@pytest.mark.django_db(transaction=True)
def test_two_racing_claims_for_one_key_never_both_win():
    for _ in range(RACE_ROUNDS):
        Action.objects.all().delete()
        rows = [
            Action.objects.create(handler="caps.import_one", concurrency_key="race")
            for _ in range(2)
        ]
        claimed = race(*(lambda pk=row.pk: executor.claim(pk) for row in rows))
        assert sum(c is not None for c in claimed) == 1, claimed
        assert Action.objects.filter(status="running").count() == 1
        # The loser is untouched: still pending, attempt not counted.
        loser = Action.objects.get(status="pending")
        assert loser.attempt == 0


def test_two_racing_starts_with_one_key_never_run_at_the_same_time(runner):
    for round_ in range(RACE_ROUNDS):
        caps.events.clear()
        started = race(
            lambda: service.start("caps.import_one", {"hold": 0.005}),
            lambda: service.start("caps.import_one", {"hold": 0.005}),
        )
        assert all(s.ok for s in started), started
        for s in started:
            assert wait_finished(s.action.pk).status == "succeeded"
        assert max_overlap(caps.events) == 1, (round_, caps.events)
        assert [e[0] for e in caps.events].count("enter") == 2


def test_two_racing_refusing_starts_accept_exactly_one(runner):
    for round_ in range(RACE_ROUNDS):
        request = {"gate": f"refuse-race-{round_}"}  # the winner holds the key until set
        started = race(
            lambda r=request: service.start("caps.import_refuse", r),
            lambda r=request: service.start("caps.import_refuse", r),
        )
        outcomes = sorted(s.status.value for s in started)
        assert outcomes == ["busy", "ok"], (round_, outcomes)
        (accepted,) = [s for s in started if s.ok]
        gate(request["gate"]).set()
        wait_finished(accepted.action.pk)


def test_a_key_function_returning_a_non_string_is_a_clear_error(runner, temporary_handler):
    @temporary_handler("caps.bad_key", concurrency_key=lambda request: 42)
    def bad_key(ctx: Any) -> None:
        return None

    with pytest.raises(HandlerError, match="concurrency key must be a string"):
        service.start("caps.bad_key")


def test_a_request_the_key_function_cannot_read_is_a_value_error(runner):
    with pytest.raises(ValueError, match="could not derive a concurrency key"):
        service.start("caps.export_per_customer", {"no_customer": 1})
    assert not Action.objects.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_busy": "queue"}, "on_busy must be 'wait' or 'refuse'"),
        ({"concurrency_key": ""}, "concurrency_key must be a non-empty string"),
        ({"concurrency_key": 3}, "concurrency_key must be a non-empty string"),
    ],
)
def test_bad_concurrency_options_are_refused_at_registration(options, message):
    with pytest.raises(HandlerError, match=message):
        handler("caps.misdeclared", **options)(lambda ctx: None)
