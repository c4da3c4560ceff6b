"""Property-based tests: random sequences of service operations keep the invariants.

A terminal action never changes again, ``seq`` never goes back, and every operation
answers with an ``OpStatus`` (never an exception) whatever the order of calls.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from async_actions import service
from async_actions.executor import claim
from async_actions.models import Action
from async_actions.payloads import PayloadError, check_payload
from async_actions.runners.base import BaseRunner
from async_actions.service import OpStatus

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FROZEN = ("status", "response", "error", "percent", "message", "data", "seq", "finished_at")


class RecordingRunner(BaseRunner):
    """Keeps dispatched ids instead of running them, so the test drives each step."""

    def __init__(self) -> None:
        super().__init__()
        self.dispatched: list[uuid.UUID] = []

    def dispatch(self, action_id: uuid.UUID) -> None:
        self.dispatched.append(action_id)


class ServiceMachine(RuleBasedStateMachine):
    actions = Bundle("actions")

    def __init__(self) -> None:
        super().__init__()
        self.seq: dict[uuid.UUID, int] = {}
        self.frozen: dict[uuid.UUID, dict[str, Any]] = {}

    def _row(self, pk: uuid.UUID) -> Action:
        return Action.objects.get(pk=pk)

    def _after(self, pk: Any, status: OpStatus) -> None:
        assert isinstance(status, OpStatus)
        if not isinstance(pk, uuid.UUID):
            return
        row = self._row(pk)
        if row.is_finished and pk not in self.frozen:
            self.frozen[pk] = {f: getattr(row, f) for f in FROZEN}

    def _refused(self, value: Any, call: Any) -> bool:
        """Values a database cannot store are refused with PayloadError, changing nothing."""
        try:
            check_payload(value, "value")
        except PayloadError:
            before = list(Action.objects.values())
            with pytest.raises(PayloadError):
                call()
            assert list(Action.objects.values()) == before
            return True
        return False

    @rule(target=actions, request=JSON, key=st.sampled_from(["", "k1", "k2"]))
    def start(self, request: Any, key: str) -> uuid.UUID:
        if self._refused(request, lambda: service.start("tests.echo", {"r": request})):
            request = "replaced"
        holder = (
            Action.objects.active().filter(session_key="s", idempotency_key=key).first()
            if key
            else None
        )
        result = service.start(
            "tests.echo", {"r": request}, session_key="s", idempotency_key=key or None
        )
        assert isinstance(result.status, OpStatus)
        if holder is not None and holder.request != json.loads(json.dumps({"r": request})):
            # The key names other unfinished work: refused, nothing written.
            assert (result.status, result.action) == (OpStatus.KEY_REUSED, None)
            return holder.pk
        assert result.status is OpStatus.OK and result.action is not None
        pk = result.action.pk
        if not result.created:
            existing = self._row(pk)
            assert existing.is_active and existing.idempotency_key == key
        return pk

    @rule(pk=actions)
    def claim_it(self, pk: uuid.UUID) -> None:
        before = self._row(pk).status
        claimed = claim(pk)
        assert (claimed is not None) == (before == Action.Status.PENDING)
        self._after(pk, OpStatus.OK)

    @rule(pk=actions, percent=st.floats(0, 100), message=st.text(max_size=30), data=JSON)
    def progress(self, pk: uuid.UUID, percent: float, message: str, data: Any) -> None:
        was_finished = self._row(pk).is_finished
        if self._refused(data, lambda: service.update_progress(pk, percent, message, data)):
            return
        status = service.update_progress(pk, percent, message, {"d": data})
        assert status is (OpStatus.ACTION_COMPLETED if was_finished else OpStatus.OK)
        self._after(pk, status)

    @rule(pk=actions, response=JSON)
    def complete(self, pk: uuid.UUID, response: Any) -> None:
        was_finished = self._row(pk).is_finished
        if self._refused(response, lambda: service.complete(pk, response)):
            return
        status = service.complete(pk, response)
        assert status is (OpStatus.ACTION_COMPLETED if was_finished else OpStatus.OK)
        self._after(pk, status)

    @rule(pk=actions, error=st.text(max_size=30))
    def fail(self, pk: uuid.UUID, error: str) -> None:
        was_finished = self._row(pk).is_finished
        status = service.fail(pk, error)
        assert status is (OpStatus.ACTION_COMPLETED if was_finished else OpStatus.OK)
        self._after(pk, status)

    @rule(pk=actions)
    def cancel(self, pk: uuid.UUID) -> None:
        was_finished = self._row(pk).is_finished
        status = service.cancel(pk)
        assert status is (OpStatus.ACTION_COMPLETED if was_finished else OpStatus.OK)
        self._after(pk, status)

    @rule(pk=consumes(actions))
    def forget(self, pk: uuid.UUID) -> None:
        """Stop using an action (keeps the bundle small), checking it one last time."""
        self.check_invariants_for(pk)

    @rule(
        bogus=st.one_of(st.uuids(), st.text(max_size=40), st.integers(), st.none()),
        op=st.sampled_from(["progress", "complete", "fail", "cancel"]),
    )
    def unknown_id(self, bogus: Any, op: str) -> None:
        call = {
            "progress": lambda: service.update_progress(bogus, 1),
            "complete": lambda: service.complete(bogus, None),
            "fail": lambda: service.fail(bogus, "x"),
            "cancel": lambda: service.cancel(bogus),
        }[op]
        assert call() is OpStatus.NOT_FOUND

    def check_invariants_for(self, pk: uuid.UUID) -> None:
        row = self._row(pk)
        assert row.seq >= self.seq.get(pk, 0), "seq went back"
        self.seq[pk] = row.seq
        if pk in self.frozen:
            assert {f: getattr(row, f) for f in FROZEN} == self.frozen[pk], "terminal changed"

    @invariant()
    def invariants_hold(self) -> None:
        for pk in list(self.seq) + [p for p in self.frozen if p not in self.seq]:
            self.check_invariants_for(pk)
        for row in Action.objects.all():
            self.check_invariants_for(row.pk)


@pytest.fixture
def recording_runner(monkeypatch: pytest.MonkeyPatch) -> RecordingRunner:
    from async_actions import runners

    runner = RecordingRunner()
    monkeypatch.setattr(runners, "_runner", runner)
    return runner


@pytest.mark.django_db
def test_random_operation_sequences_keep_the_invariants(recording_runner: RecordingRunner):
    import tests.actions  # noqa: F401  (registers tests.echo)

    def machine() -> ServiceMachine:
        Action.objects.all().delete()
        return ServiceMachine()

    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
