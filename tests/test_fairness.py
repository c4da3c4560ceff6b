"""Fair shares: one client's flood cannot hold up anyone else (issue 15, finding 2).

An anonymous client that drops its cookie is a new owner per POST, so the limits count
it by address, and the running cap (MAX_RUNNING_PER_OWNER) keeps one owner from taking
every worker: the other user's short action starts at once, on both runners.
"""

from __future__ import annotations

import inspect
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client, override_settings
from django.utils import timezone

from async_actions import executor, fairness, lifecycle, recovery, service
from async_actions.models import Action
from async_actions.progress import Publisher
from async_actions.runners import get_runner, reset_runner
from tests.actions import gate
from tests.helpers import recording_settings, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FLOODER = "203.0.113.66"
#: The test settings' timings, with the product's limits (tests/settings.py lifts them).
BASE = {
    "HEARTBEAT_INTERVAL": 0.5,
    "STALE_AFTER": 5.0,
    "CANCEL_POLL_INTERVAL": 0.1,
    "SHUTDOWN_TIMEOUT": 2.0,
    "SHUTDOWN_GRACE": 2.0,
    "SWEEP_INTERVAL": 3600.0,
    "MAX_WORKERS": 4,
    "RUN_WITHOUT_STARTUP": True,  # this process is the server (tests/settings.py)
}
LIMITS_OFF = {"MAX_ACTIVE_PER_OWNER": None, "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": None}
TASKS = {**BASE, "RUNNER": "async_actions.runners.tasks.TasksRunner"}


@pytest.fixture
def flood_gate() -> Iterator[threading.Event]:
    event = gate("flood")
    event.clear()
    yield event
    event.set()


def use(settings: dict[str, Any]) -> Any:
    """Apply ``settings`` and build the runner from them."""
    override = override_settings(ASYNC_ACTIONS=settings)
    override.enable()
    reset_runner()
    return override


def flood(count: int, *, address: str = FLOODER, **meta: Any) -> Counter[int]:
    """POST ``count`` long actions as an anonymous client that never keeps its cookie."""
    codes: Counter[int] = Counter()
    for _ in range(count):
        client = Client(REMOTE_ADDR=address, **meta)  # a new session every time
        codes[client.post("/t/gate/", {"gate": "flood"}).status_code] += 1
    return codes


def start_as_user(client: Client) -> str:
    response = client.post("/t/echo/", {"word": "mine"})
    assert response.status_code == 303, response.content
    match = re.search(r"[0-9a-f-]{36}", response["Location"])
    assert match is not None
    return match.group(0)


def logged_in_client() -> Client:
    client = Client(REMOTE_ADDR="198.51.100.20")
    client.force_login(get_user_model().objects.create_user("bea", password="pw"))
    return client


def assert_user_action_starts_within_2s_and_finishes(client: Client) -> None:
    began = time.monotonic()
    pk = start_as_user(client)
    wait_for(lambda: Action.objects.get(pk=pk).started_at is not None, timeout=2.0)
    assert time.monotonic() - began < 2.0
    action = wait_for(lambda: Action.objects.filter(pk=pk).finished().first())
    assert action.status == "succeeded"
    assert action.response == {"echo": {"word": "mine"}}


def drain(event: threading.Event, timeout: float = 30.0) -> None:
    """Let the flood finish, so no action outlives the test."""
    event.set()
    wait_for(lambda: not Action.objects.active().exists(), timeout=timeout)


def flood_running() -> int:
    return Action.objects.filter(user__isnull=True, status="running").count()


@pytest.mark.parametrize("limits", ["defaults", "limits off"])
def test_anonymous_flood_does_not_delay_another_users_action_on_the_thread_runner(
    flood_gate: threading.Event, limits: str
) -> None:
    override = use({**BASE, **(LIMITS_OFF if limits == "limits off" else {})})
    try:
        codes = flood(100)
        if limits == "defaults":  # MAX_ACTIVE_PER_ANONYMOUS_ADDRESS = 20
            assert codes == {303: 20, 429: 80}
        else:
            assert codes == {303: 100}
        wait_for(lambda: flood_running() >= 2)  # MAX_RUNNING_PER_OWNER = 2 of 4 threads
        assert_user_action_starts_within_2s_and_finishes(logged_in_client())
        assert flood_running() == 2
        drain(flood_gate)
        assert Action.objects.filter(status="succeeded").count() == codes[303] + 1
    finally:
        flood_gate.set()
        reset_runner()
        override.disable()


class InProcessWorkers:
    """db_worker loops on threads of this process (like separate worker processes)."""

    def __init__(self, count: int) -> None:
        from django_tasks_db.management.commands.db_worker import Worker

        accepted = inspect.signature(Worker).parameters
        options = {
            "queue_names": ["default"],
            "interval": 0.02,
            "batch": False,
            "backend_name": "default",
            "startup_delay": False,
            "max_tasks": None,
            "excluded_queue_names": [],
        }
        self.workers = [
            Worker(**{k: v for k, v in options.items() if k in accepted}, worker_id=f"w{i}")
            for i in range(count)
        ]
        self.threads = [threading.Thread(target=self._run, args=(w,)) for w in self.workers]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _run(worker: Any) -> None:
        try:
            worker.run()
        finally:
            connections.close_all()

    def stop(self) -> None:
        for worker in self.workers:
            worker.running = False
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.mark.parametrize("limits", ["defaults", "limits off"])
def test_anonymous_flood_does_not_delay_another_users_action_on_the_tasks_runner(
    flood_gate: threading.Event, limits: str
) -> None:
    override = use({**TASKS, **(LIMITS_OFF if limits == "limits off" else {})})
    workers = None
    try:
        codes = flood(100)
        assert codes[303] == (20 if limits == "defaults" else 100)
        workers = InProcessWorkers(4)
        wait_for(lambda: flood_running() >= 2)
        assert_user_action_starts_within_2s_and_finishes(logged_in_client())
        assert flood_running() == 2
        drain(flood_gate)
    finally:
        flood_gate.set()
        if workers is not None:
            workers.stop()
        reset_runner()
        override.disable()


def test_refused_start_answers_a_readable_429_page(flood_gate: threading.Event) -> None:
    override = use({**BASE, "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": 1})
    try:
        assert flood(1) == {303: 1}
        response = Client(REMOTE_ADDR=FLOODER).post("/t/gate/", {"gate": "flood"})
        assert response.status_code == 429
        assert response["Retry-After"]
        assert b"Wait for one to finish" in response.content
        assert b"Traceback" not in response.content
        # Another address is not held back by it.
        assert flood(1, address="192.0.2.44") == {303: 1}
        drain(flood_gate)
    finally:
        flood_gate.set()
        reset_runner()
        override.disable()


def test_api_start_over_the_default_owner_limit_answers_429_json(
    flood_gate: threading.Event,
) -> None:
    from rest_framework.test import APIClient

    override = use(BASE)  # MAX_ACTIVE_PER_OWNER = 10
    try:
        api = APIClient(REMOTE_ADDR="198.51.100.30")
        api.force_authenticate(get_user_model().objects.create_user("cy", password="pw"))
        body = {"handler": "tests.wait", "request": {"gate": "flood"}}
        codes = [api.post("/api/actions/", body, format="json").status_code for _ in range(11)]
        assert codes == [201] * 10 + [429]
        refused = api.post("/api/actions/", body, format="json")
        assert refused.status_code == 429
        assert refused.json()["code"] == "limit_reached"
        assert refused["Retry-After"]
        assert set(Action.objects.values_list("client_address", flat=True)) == {"198.51.100.30"}
        drain(flood_gate)
    finally:
        flood_gate.set()
        reset_runner()
        override.disable()


@pytest.mark.parametrize("trusted", [False, True])
def test_proxy_header_is_honoured_only_when_set(flood_gate: threading.Event, trusted: bool):
    settings = {**BASE, "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": 2}
    if trusted:
        settings["TRUSTED_PROXY_HEADER"] = "HTTP_X_FORWARDED_FOR"
    override = use(settings)
    try:
        codes: Counter[int] = Counter()
        for i in range(4):  # one proxy address, four clients (or one liar) behind it
            codes += flood(1, address="10.0.0.2", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
        stored = set(Action.objects.values_list("client_address", flat=True))
        if trusted:
            assert codes == {303: 4}
            assert stored == {f"192.0.2.{i}" for i in range(4)}
        else:
            assert codes == {303: 2, 429: 2}
            assert stored == {"10.0.0.2"}
        drain(flood_gate)
    finally:
        flood_gate.set()
        reset_runner()
        override.disable()


def test_python_api_without_an_address_is_not_limited_by_address(monkeypatch: Any) -> None:
    override = use({**BASE, "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": 1})
    try:
        monkeypatch.setattr(get_runner(), "dispatch", lambda pk: None)
        for i in range(3):
            assert service.start("tests.echo", session_key=f"s{i}").ok
        assert service.start("tests.echo", session_key="x", client_address="192.0.2.9").ok
        refused = service.start("tests.echo", session_key="y", client_address="192.0.2.9")
        assert refused.status is service.OpStatus.LIMIT_REACHED
        with pytest.raises(ValueError, match="client_address"):
            service.start("tests.echo", client_address="not an address")
    finally:
        reset_runner()
        override.disable()


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_starts_never_take_an_address_over_its_limit(
    round_: int, monkeypatch: Any
) -> None:
    """Eight cookie-less starts from one address at the same moment: the limit holds."""
    override = use({**BASE, "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": 3})
    try:
        monkeypatch.setattr(get_runner(), "dispatch", lambda pk: None)
        barrier = threading.Barrier(8)
        outcomes: list[Any] = []

        def start(i: int) -> None:
            try:
                barrier.wait()
                result = service.start("tests.echo", session_key=f"r{i}", client_address=FLOODER)
                outcomes.append(result.status)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert Counter(outcomes) == {
            service.OpStatus.OK: 3,
            service.OpStatus.LIMIT_REACHED: 5,
        }
        assert Action.objects.filter(client_address=FLOODER).count() == 3
    finally:
        reset_runner()
        override.disable()


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_claims_never_take_an_owner_over_the_running_cap(round_: int) -> None:
    """Eight workers claim eight of one user's actions at the same moment: two win."""
    user = get_user_model().objects.create_user(f"dee{round_}", password="pw")
    ids = [Action.objects.create(handler="tests.echo", user=user).pk for _ in range(8)]
    barrier = threading.Barrier(len(ids))
    won: list[Any] = []

    def claim(pk: Any) -> None:
        try:
            barrier.wait()
            if executor.claim(pk) is not None:
                won.append(pk)
        finally:
            connections.close_all()

    with override_settings(ASYNC_ACTIONS={**BASE, "MAX_RUNNING_PER_OWNER": 2}):
        threads = [threading.Thread(target=claim, args=(pk,)) for pk in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(won) == 2
    assert Action.objects.filter(status="running").count() == 2


def _end_by_returning(pk: Any, name: str) -> None:
    gate(name).set()


def _end_by_cancel(pk: Any, name: str) -> None:
    assert service.cancel(pk) is service.OpStatus.OK


def _end_by_fail(pk: Any, name: str) -> None:
    assert service.fail(pk, "stopped by an operator") is service.OpStatus.OK


def _end_by_complete(pk: Any, name: str) -> None:
    assert service.complete(pk, {"done": "elsewhere"}) is service.OpStatus.OK


def _end_by_sweep(pk: Any, name: str) -> None:
    Action.objects.filter(pk=pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    # Swept as of an hour on: the supervisor's first heartbeat of the action may land
    # after the UPDATE above on a loaded machine, and must not make the test flaky.
    assert recovery.sweep(now=timezone.now() + timedelta(hours=1)).failed == [pk]


def _end_by_time_limit(pk: Any, name: str) -> None:
    pass  # TIME_LIMIT is set below; the stubborn handler ignores its cancel


@pytest.mark.parametrize(
    "end",
    [
        _end_by_returning,
        _end_by_cancel,
        _end_by_fail,
        _end_by_complete,
        _end_by_sweep,
        _end_by_time_limit,
    ],
    ids=lambda f: f.__name__.removeprefix("_end_by_"),
)
def test_every_end_of_a_running_action_starts_the_owners_next(end: Any) -> None:
    settings = {**BASE, "MAX_RUNNING_PER_OWNER": 1}
    handler = "tests.wait"
    if end is _end_by_sweep:  # no heartbeat rewrites the stale one before the sweep
        settings.update(HEARTBEAT_INTERVAL=600.0, STALE_AFTER=1800.0)
    if end is _end_by_time_limit:
        settings.update(TIME_LIMIT=0.3, TIME_LIMIT_GRACE=0.3)
        handler = "tests.stubborn"
    override = use(settings)
    user = get_user_model().objects.create_user("eve", password="pw")
    name = f"end-{uuid.uuid4()}"
    gate(name).clear()
    try:
        first = service.start(handler, {"gate": name}, user=user).action
        assert first is not None
        wait_for(lambda: Action.objects.get(pk=first.pk).status == "running")
        second = service.start("tests.echo", {"n": 2}, user=user).action
        assert second is not None
        # Its own dispatch is refused at the cap (and it stays pending).
        assert executor.execute(second.pk) is None
        assert Action.objects.get(pk=second.pk).status == "pending"
        end(first.pk, name)
        done = wait_for(lambda: Action.objects.filter(pk=second.pk).finished().first())
        assert done.status == "succeeded"
    finally:
        gate(name).set()
        reset_runner()
        override.disable()


def _echo_actions(*fields: dict[str, Any]) -> list[Action]:
    """One stored action per set of owner fields, for the tests comparing owner SQL."""
    return [Action.objects.create(handler="tests.echo", **owner) for owner in fields]


@pytest.mark.parametrize("kind", ["user", "address", "session"])
def test_the_owners_sql_selects_the_rows_its_q_selects(kind: str) -> None:
    """``Owner.sql`` (hand-written statements) and ``Owner.actions`` (the ORM) agree."""
    from django.db import connection

    from async_actions.fairness import Owner

    user = get_user_model().objects.create_user("owner-sql")
    other = get_user_model().objects.create_user("owner-sql-2")
    rows = _echo_actions(
        {"user": user, "client_address": "192.0.2.1", "session_key": "s1"},
        {"user": other, "client_address": "192.0.2.1", "session_key": "s1"},
        {"client_address": "192.0.2.1", "session_key": "s1"},
        {"client_address": "192.0.2.1", "session_key": "s2"},
        {"client_address": "", "session_key": "s1"},
        {"client_address": "", "session_key": "s2"},
    )
    value = {"user": user.pk, "address": "192.0.2.1", "session": "s1"}[kind]
    owner = Owner(kind, value)
    condition, params = owner.sql("a")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT a.id FROM async_actions_action a WHERE {condition}", params)
        by_sql = {uuid.UUID(str(pk)) for (pk,) in cursor.fetchall()}
    by_q = set(Action.objects.filter(owner.actions()).values_list("pk", flat=True))
    assert by_sql == by_q and len(by_q) in (1, 2)
    assert by_q <= {row.pk for row in rows}


def test_same_owner_sql_pairs_the_rows_owner_of_pairs() -> None:
    """``same_owner_sql`` (the claim's cap on PostgreSQL, written before the owner is
    known) pairs two rows exactly when ``owner_of`` gives both the same owner."""
    user = get_user_model().objects.create_user("same-owner")
    other = get_user_model().objects.create_user("same-owner-2")
    rows = _echo_actions(
        {"user": user, "client_address": "192.0.2.1", "session_key": "s1"},
        {"user": user, "client_address": "", "session_key": ""},
        {"user": other, "client_address": "192.0.2.1", "session_key": "s1"},
        {"client_address": "192.0.2.1", "session_key": "s1"},
        {"client_address": "192.0.2.1", "session_key": "s2"},
        {"client_address": "", "session_key": "s1"},
        {"client_address": "", "session_key": "s2"},
        {"client_address": "", "session_key": "s1"},
        {"client_address": "", "session_key": ""},
        {"client_address": "", "session_key": ""},
    )
    owners = {
        row.pk: fairness.owner_of(row.user_id, row.client_address, row.session_key) for row in rows
    }
    expected = {
        (a, b) for a in owners for b in owners if owners[a] is not None and owners[a] == owners[b]
    }
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT t.id, r.id FROM async_actions_action t, async_actions_action r "
            f"WHERE {fairness.same_owner_sql('r', 't')}"
        )
        pairs = {(uuid.UUID(str(a)), uuid.UUID(str(b))) for a, b in cursor.fetchall()}
    assert pairs == expected
    assert len(expected) == 4 + 1 + 4 + 4 + 1  # user, other, address, s1, s2; none for no owner


def test_an_end_after_a_login_took_the_action_over_wakes_the_new_owners_next() -> None:
    """The finish reads the waiting actions of the owner the action was claimed for
    (with its write, on PostgreSQL); when a login moved the action to a user meanwhile,
    the user's waiting action is the one woken, as ``fairness.release`` of the row as
    written does."""
    user = get_user_model().objects.create_user("took-over")
    with recording_settings(MAX_RUNNING_PER_OWNER=1):
        reset_runner()
        try:
            first = Action.objects.create(handler="tests.echo", session_key="s-took-over")
            claimed = executor.claim(first.pk)
            assert claimed is not None
            Action.objects.filter(session_key="s-took-over").update(user=user)
            waiting = Action.objects.create(handler="tests.echo", user=user)
            assert executor.claim(waiting.pk) is None  # the user runs one: at the cap
            runner = get_runner()
            runner.dispatched.clear()
            assert lifecycle.finish(Publisher(claimed), "succeeded", action=claimed)
            assert runner.dispatched == [waiting.pk]
            assert claimed.user_id == user.pk
        finally:
            reset_runner()
