"""CeleryRunner: actions sent as Celery messages and run by a real Celery worker.

The first part runs in this process on kombu's in-memory broker: what goes on a message
(routing, ``eta``, hard time limit), that the claim decides over redelivery, revoke on
cancel, the beat task. The second part starts a real prefork worker (2 processes) on
Redis, a daphne process and PostgreSQL: progress reaches a WebSocket tab, pending and
running cancels, a hard time limit kills a stubborn handler, a killed worker's action is
failed or retried by the sweep and never run twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, current_app
from celery.exceptions import TimeLimitExceeded
from celery.signals import before_task_publish
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from async_actions import service
from async_actions.exceptions import HandlerError, StartRefused
from async_actions.handlers import HandlerOptions
from async_actions.models import Action
from async_actions.runners import get_runner, reset_runner
from async_actions.runners.celery import HARD_KILL_MARGIN, TASK_NAME, CeleryRunner, run_action
from async_actions.tasks import start_action
from example_project.celery import app as celery_app  # noqa: F401  (a project's __init__ does this)
from tests.helpers import need, postgres_available, redis_available, wait_for
from tests.servers import OPS_USER, ROOT, ApiUser, Server, daphne, manage, pg, scratch_database

CELERY_RUNNER = {
    "RUNNER": "async_actions.runners.celery.CeleryRunner",
    "HEARTBEAT_INTERVAL": 0.5,
    "STALE_AFTER": 5.0,
    "SWEEP_INTERVAL": 3600.0,
    "TIME_LIMIT_GRACE": 2.0,
    "MAX_ACTIVE_PER_OWNER": None,
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": None,
    "MAX_RUNNING_PER_OWNER": None,
}


# -- in this process, on the in-memory broker ---------------------------------------------


@pytest.fixture
def celery_runner(transactional_db: None) -> Iterator[CeleryRunner]:
    with override_settings(ASYNC_ACTIONS=CELERY_RUNNER):
        reset_runner()
        runner = get_runner()
        assert isinstance(runner, CeleryRunner)
        yield runner
    reset_runner()


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """Every message this process publishes: its headers, routing and properties."""
    sent: list[dict[str, Any]] = []

    def record(sender: Any = None, **kwargs: Any) -> None:
        sent.append({"task": sender, **kwargs})

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


def test_start_sends_one_message_naming_the_action_and_stores_its_id(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    started = service.start("tests.echo", {"via": "celery"}, session_key="s")
    assert started.ok
    [message] = published
    assert message["task"] == TASK_NAME
    assert list(message["body"][0]) == [str(started.action.pk)]
    action = Action.objects.get(pk=started.action.pk)
    assert action.status == "pending"
    assert action.task_id == message["headers"]["id"]
    assert message["headers"]["eta"] is None
    assert message["headers"]["timelimit"] == [None, None]  # no limit without time_limit


def test_start_sends_what_it_inserted_without_reading_or_writing_the_row_again(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    """The message id goes into the action's INSERT, and the handler and ``run_after``
    the start knows go on the message: nothing after the commit (issue 18)."""
    with CaptureQueriesContext(connection) as captured:
        started = service.start("tests.echo", run_after=timedelta(hours=1))
    assert started.ok
    kinds = [q["sql"].split()[0].upper() for q in captured.captured_queries]
    assert kinds == ["BEGIN", "INSERT", "COMMIT"]
    [message] = published
    assert message["headers"]["id"] == Action.objects.get(pk=started.action.pk).task_id
    assert message["body"][1] == {"handler": "tests.echo"}
    assert message["headers"]["eta"] == started.action.run_after.isoformat()


def test_a_limited_owners_start_takes_its_lock_and_counts_in_one_round_trip(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    """PostgreSQL: the owner's advisory lock and the limit counts before the INSERT, in
    one execute; SQLite counts after the INSERT that takes its write lock."""
    owner = {"session_key": "s-limited", "client_address": "10.0.0.8"}
    with override_settings(ASYNC_ACTIONS={**CELERY_RUNNER, "MAX_ACTIVE_PER_OWNER": 2}):
        assert service.start("tests.echo", **owner).ok
        with CaptureQueriesContext(connection) as captured:
            assert service.start("tests.echo", **owner).ok
        assert service.start("tests.echo", **owner).status is service.OpStatus.LIMIT_REACHED
    sql = [q["sql"] for q in captured.captured_queries]
    kinds = [statement.split()[0].upper() for statement in sql]
    if connection.vendor == "postgresql":
        assert kinds == ["BEGIN", "SELECT", "INSERT", "COMMIT"]
        assert sql[1].startswith("SELECT pg_advisory_xact_lock(")
        assert "; SELECT (SELECT COUNT(*)" in sql[1]
    else:
        assert kinds == ["BEGIN", "INSERT", "SELECT", "COMMIT"]
    assert len(published) == 2
    assert Action.objects.count() == 2


def test_start_inside_a_rolled_back_transaction_sends_nothing(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        service.start("tests.echo", session_key="s")
        raise RuntimeError("roll back")
    assert published == []
    assert Action.objects.count() == 0


def test_handler_queue_routing_key_and_priority_go_on_the_message(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    service.start("tests.routed", session_key="s")
    [message] = published
    assert message["routing_key"] == "aa-routed"
    assert message["properties"]["priority"] == 3


def test_without_handler_routing_the_projects_task_routes_decide(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    conf, amqp = current_app.conf, current_app.amqp

    def by_handler(name: str, args: Any, kwargs: Any, options: Any, **rest: Any) -> Any:
        return {"queue": f"by-{kwargs['handler']}"}

    def routes(value: Any) -> None:  # Celery caches the routes it read from conf
        conf.task_routes = value
        amqp.flush_routes()
        amqp.router = amqp.Router()

    routes({TASK_NAME: {"queue": "actions-from-routes"}})
    try:
        service.start("tests.echo", session_key="s")
        service.start("tests.routed", session_key="s")
        routes((by_handler,))
        service.start("tests.echo", session_key="s")
    finally:
        routes(None)
    from_routes, from_handler, from_router = published
    assert from_routes["routing_key"] == "actions-from-routes"
    assert from_handler["routing_key"] == "aa-routed"  # the handler's own wins
    assert from_router["routing_key"] == "by-tests.echo"


def test_run_after_in_the_future_becomes_the_messages_eta(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    when = timezone.now() + timedelta(minutes=5)
    action = Action.objects.create(handler="tests.echo", run_after=when, session_key="s")
    past = Action.objects.create(
        handler="tests.echo", run_after=timezone.now() - timedelta(minutes=5), session_key="s"
    )
    celery_runner.dispatch(action.pk)
    celery_runner.dispatch(past.pk)
    later, due = published
    assert later["headers"]["eta"] == when.isoformat()
    assert due["headers"]["eta"] is None


def test_time_limit_becomes_a_hard_limit_after_the_grace(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    service.start("tests.stubborn_limited", session_key="s")
    [message] = published
    hard, soft = message["headers"]["timelimit"]
    assert hard == 1 + CELERY_RUNNER["TIME_LIMIT_GRACE"] + HARD_KILL_MARGIN
    assert soft is None  # the soft limit is ours: a cooperative cancel, not an exception


def test_duplicate_delivery_runs_the_action_once(celery_runner: CeleryRunner) -> None:
    started = service.start("tests.logs", {"count": 1}, session_key="s")
    task_id = Action.objects.get(pk=started.action.pk).task_id
    statuses = [run_action.apply((str(started.action.pk),), task_id=task_id).get() for _ in "abc"]
    assert statuses == ["succeeded", None, None]
    action = Action.objects.get(pk=started.action.pk)
    assert action.attempt == 1
    assert [entry["message"] for entry in action.log] == ["line 0"]


def test_a_message_taken_without_running_no_longer_holds_the_action(
    celery_runner: CeleryRunner,
) -> None:
    Action.objects.create(handler="tests.echo", status="running", concurrency_key="k")
    waiting = Action.objects.create(handler="tests.echo", concurrency_key="k", task_id="m-1")
    other = Action.objects.create(handler="tests.echo", task_id="m-2")
    assert celery_runner.holds([waiting.pk, other.pk]) == {waiting.pk, other.pk}
    assert run_action.apply((str(waiting.pk),), task_id="m-1").get() is None  # the key is busy
    assert Action.objects.get(pk=waiting.pk).task_id == ""
    assert celery_runner.holds([waiting.pk, other.pk]) == {other.pk}


def test_cancel_of_a_pending_action_revokes_its_message(
    celery_runner: CeleryRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked: list[str] = []
    monkeypatch.setattr(run_action.app.control, "revoke", revoked.append)
    started = service.start("tests.echo", session_key="s")
    task_id = Action.objects.get(pk=started.action.pk).task_id
    assert service.cancel(started.action.pk) == service.OpStatus.OK
    assert revoked == [task_id]
    assert Action.objects.get(pk=started.action.pk).status == "cancelled"


def test_a_failing_revoke_does_not_fail_the_cancel(
    celery_runner: CeleryRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(task_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(run_action.app.control, "revoke", broken)
    started = service.start("tests.echo", session_key="s")
    assert service.cancel(started.action.pk) == service.OpStatus.OK
    assert Action.objects.get(pk=started.action.pk).status == "cancelled"


def test_hard_time_limit_reported_by_celery_fails_the_running_action(
    celery_runner: CeleryRunner,
) -> None:
    running = Action.objects.create(handler="tests.stubborn_limited", status="running")
    done = Action.objects.create(handler="tests.stubborn_limited", status="succeeded")
    for action in (running, done):
        run_action.on_failure(TimeLimitExceeded(4.0), "t", (str(action.pk),), {}, None)
    failed = Action.objects.get(pk=running.pk)
    assert failed.status == "failed"
    assert failed.error == "Time limit exceeded: the action ran longer than 1 seconds."
    assert Action.objects.get(pk=done.pk).status == "succeeded"


def test_beat_task_starts_an_action_by_handler_name_with_a_payload(
    celery_runner: CeleryRunner, published: list[dict[str, Any]]
) -> None:
    action_id = start_action.apply(("tests.echo", {"day": "today"})).get()
    action = Action.objects.get(pk=action_id)
    assert (action.handler, action.request, action.status) == (
        "tests.echo",
        {"day": "today"},
        "pending",
    )
    assert [list(m["body"][0]) for m in published] == [[action_id]]  # sent to a worker to run


def test_beat_task_with_an_unknown_handler_fails_with_the_reason(
    celery_runner: CeleryRunner,
) -> None:
    with pytest.raises(StartRefused, match="no_handler"):
        start_action.apply(("tests.nope",)).get()
    assert Action.objects.count() == 0


def test_check_warns_when_celery_has_no_broker() -> None:
    conf = current_app.conf
    url = conf.broker_url
    conf.broker_url = None
    try:
        messages = list(CeleryRunner().check())
    finally:
        conf.broker_url = url
    assert [m.id for m in messages] == ["async_actions.W021"]
    assert list(CeleryRunner().check()) == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("queue", "", "queue must be a non-empty string"),
        ("queue", 3, "queue must be a non-empty string"),
        ("queue", " ", "queue must be a non-empty string"),
        ("priority", -1, "priority must be a whole number from 0 to 255"),
        ("priority", 256, "priority must be a whole number from 0 to 255"),
        ("priority", True, "priority must be a whole number from 0 to 255"),
    ],
)
def test_bad_routing_options_are_refused_with_the_fix(option: str, value: Any, message: str):
    with pytest.raises(HandlerError, match=message):
        HandlerOptions(**{option: value})


# -- a real prefork worker on Redis, daphne, PostgreSQL ------------------------------------

MIGRATE = """
from django.core.management import call_command
call_command('migrate', interactive=False, verbosity=0)
"""
#: A Redis database of its own; each run also has its own queue and key prefix.
BROKER_URL = os.environ.get("AA_CELERY_TEST_BROKER_URL", "redis://127.0.0.1:6379/13")


class Site(ApiUser):
    """daphne, the Celery worker, and what the tests need to talk to them."""

    def __init__(self, env: dict, tmp: Path, token: str, session: str) -> None:
        super().__init__(env, tmp, token, session)
        self.server: Server | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_logs: list[Path] = []
        self.client = Celery("aa-test-client", broker=BROKER_URL)
        self.client.conf.task_default_queue = env["AA_CELERY_QUEUE"]

    def start_worker(self) -> subprocess.Popen:
        """``celery -A example_project worker`` (prefork, 2 processes), once it is ready."""
        self.spawn_worker()
        return self.wait_worker()

    def spawn_worker(self) -> None:
        log_path = self.tmp / f"worker{len(self.worker_logs)}.log"
        self.worker_logs.append(log_path)
        log = open(log_path, "w")  # noqa: SIM115
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "example_project", "worker",
             "--pool", "prefork", "--concurrency", "2", "-Q", self.env["AA_CELERY_QUEUE"],
             "-n", f"aa-test-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the children too
        )  # fmt: skip

    def wait_worker(self) -> subprocess.Popen:
        assert self.worker is not None
        wait_for(lambda: self._ready(self.worker_logs[-1]), timeout=90, interval=0.1)
        return self.worker

    def kill_worker(self) -> None:
        """``kill -9`` of the worker's process group: its main process and its pool."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def _ready(self, log_path: Path) -> bool:
        assert self.worker is not None
        if self.worker.poll() is not None:
            raise AssertionError(f"worker exited: {log_path.read_text()[-3000:]}")
        return " ready." in log_path.read_text(errors="replace")

    def worker_log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.worker_logs)

    def diagnosis(self) -> str:
        return self.worker_log()[-3000:]

    @property
    def base(self) -> str:
        assert self.server is not None
        return self.server.base

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.call(self.base, method, path, body)

    def start(self, handler: str, **request: Any) -> str:
        return self.start_at(self.base, handler, **request)

    def get(self, pk: str) -> dict:
        return self.get_at(self.base, pk)

    def wait(self, pk: str, predicate: Any, timeout: float = 30) -> dict:
        return self.wait_at(self.base, pk, predicate, timeout)

    def task_id(self, pk: str) -> str:
        [(task_id,)] = pg(
            "SELECT task_id FROM async_actions_action WHERE id = %s",
            pk,
            dbname=self.env["AA_SCALED_DB"],
        )
        return str(task_id)

    def running_pid(self, pk: str) -> int:
        for run_pk, _attempt, pid in reversed(self.runs()):
            if run_pk == pk:
                return pid
        raise AssertionError(f"{pk} has not run")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    need(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    tmp = tmp_path_factory.mktemp("celery")
    with scratch_database("aa_celery") as name:
        yield from _site(tmp, name)


def _site(tmp: Path, name: str) -> Iterator[Site]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_celery",
        "DEMO_PROFILE": "celery",  # example_project loads its Celery app, as a project does
        "AA_SCALED_DB": name,
        "AA_REDIS_PREFIX": f"aa-test-{name}",
        "AA_CELERY_BROKER_URL": BROKER_URL,
        "AA_CELERY_QUEUE": f"aa-test-{name}",
        "AA_RUN_LOG": str(tmp / "runs.log"),
        "PYTHONPATH": str(ROOT),
    }
    # One Django start-up for both (the machine may be busy: each costs seconds).
    token, session = manage(env, "shell", "-c", MIGRATE + OPS_USER).split()[-2:]
    site = Site(env, tmp, token, session)
    site.spawn_worker()  # starts while daphne does
    with daphne(env, tmp / "daphne.log", migrate=False) as server:
        site.server = server
        site.wait_worker()
        try:
            yield site
        finally:
            site.kill_worker()  # nothing of it is needed any more
            site.client.connection_for_write().default_channel.queue_purge(env["AA_CELERY_QUEUE"])


async def _watch(site: Site, pk: str) -> list[dict]:
    """Every update a tab of the daphne process receives for ``pk``, up to the last."""
    from websockets.asyncio.client import connect

    assert site.server is not None
    url = site.server.base.replace("http://", "ws://") + f"/ws/async-actions/{pk}/"
    headers = {"Cookie": f"sessionid={site.session}", "Origin": site.server.base}
    events: list[dict] = []
    async with connect(url, additional_headers=headers, open_timeout=30) as socket:
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
            events.append(message["action"])
            if message["action"]["status"] in ("succeeded", "failed", "cancelled"):
                return events


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
class TestWorker:
    def test_progress_reaches_a_tab_of_daphne_and_the_result_is_stored(self, site: Site):
        pk = site.start("tests.scaled_work", steps=8, delay=0.15)
        events = asyncio.run(_watch(site, pk))
        progress = [e["percent"] for e in events if e["status"] == "running" and e["percent"] > 0]
        assert len(progress) >= 3, events
        assert progress == sorted(progress)
        assert events[-1]["status"] == "succeeded"
        final = site.get(pk)
        assert final["response"]["steps"] == 8
        assert final["response"]["pid"] not in (os.getpid(), site.server.process.pid)
        assert site.task_id(pk)  # the message that carried it

    def test_cancel_of_a_pending_action_revokes_its_message_and_it_never_runs(
        self, site: Site
    ) -> None:
        gates = [site.tmp / f"gate-{i}" for i in range(2)]
        busy = [site.start("tests.wait_file", path=str(gate)) for gate in gates]
        for pk in busy:  # both worker processes are taken
            site.wait(pk, lambda x: x["status"] == "running")
        waiting = site.start("tests.scaled_work", steps=1)
        task_id = site.task_id(waiting)
        status, body = site.api("POST", f"{waiting}/cancel/")
        assert status in (200, 202), body
        assert site.get(waiting)["status"] == "cancelled"
        revoked = wait_for(
            lambda: any(
                task_id in ids
                for ids in (site.client.control.inspect(timeout=1).revoked() or {}).values()
            ),
            timeout=10,
        )
        assert revoked
        for gate in gates:
            gate.touch()
        for pk in busy:
            site.wait(pk, lambda x: x["status"] == "succeeded")
        wait_for(lambda: f"Discarding revoked task: {TASK_NAME}[{task_id}]" in site.worker_log())
        assert waiting not in {pk for pk, _attempt, _pid in site.runs()}
        assert site.get(waiting)["status"] == "cancelled"

    def test_cancel_of_a_running_action_stops_it_cooperatively(self, site: Site) -> None:
        pk = site.start("tests.scaled_work", steps=200, delay=0.1)
        site.wait(pk, lambda x: x["status"] == "running" and x["percent"] > 0)
        status, body = site.api("POST", f"{pk}/cancel/")
        assert status == 202, body
        final = site.wait(pk, lambda x: x["status"] != "running", timeout=10)
        assert final["status"] == "cancelled"
        assert final["percent"] < 50

    def test_hard_time_limit_kills_a_stubborn_handler_and_the_next_action_runs(
        self, site: Site
    ) -> None:
        stubborn = [site.start("tests.stubborn_limited") for _ in range(2)]
        for pk in stubborn:  # both worker processes are stuck in a handler that never stops
            site.wait(pk, lambda x: x["status"] == "running")
        pids = [site.running_pid(pk) for pk in stubborn]
        after = site.start("tests.scaled_work", steps=2)
        for pk in stubborn:
            final = site.wait(pk, lambda x: x["status"] != "running", timeout=15)
            assert final["status"] == "failed"
            assert final["error"] == "Time limit exceeded: the action ran longer than 1 seconds."
        done = site.wait(after, lambda x: x["status"] == "succeeded", timeout=20)
        assert done["response"]["pid"] not in pids
        for pid in pids:  # killed by Celery's hard limit, not merely abandoned
            wait_for(lambda pid=pid: not _alive(pid), timeout=10)
        assert "Hard time limit" in site.worker_log()

    def test_killed_worker_process_mid_action_is_failed_or_retried_never_run_twice(
        self, site: Site
    ) -> None:
        once = site.start("tests.scaled_work", steps=400, delay=0.05)
        site.wait(once, lambda x: x["status"] == "running" and x["percent"] > 0)
        os.kill(site.running_pid(once), signal.SIGKILL)  # the pool process running it
        failed = site.wait(once, lambda x: x["status"] != "running", timeout=20)
        assert failed["status"] == "failed"
        assert "worker lost" in failed["error"]

        twice = site.start("tests.scaled_retry", steps=30, delay=0.05)
        site.wait(twice, lambda x: x["status"] == "running" and x["percent"] > 0)
        first_pid = site.running_pid(twice)
        site.kill_worker()  # the whole worker this time: main process and pool
        site.start_worker()  # what a process supervisor would do
        final = site.wait(twice, lambda x: x["status"] in ("succeeded", "failed"), timeout=30)
        assert final["status"] == "succeeded"
        assert final["attempt"] == 2
        assert final["response"]["pid"] != first_pid

    def test_beat_task_sent_to_the_worker_starts_and_runs_an_action(self, site: Site) -> None:
        site.client.send_task("async_actions.start_action", ("tests.echo", {"beat": 1}))
        # The action belongs to nobody (only staff see it through the API): read the row.
        row = wait_for(
            lambda: _rows(site, "request = '{\"beat\": 1}'::jsonb AND status = 'succeeded'"),
            timeout=20,
        )
        assert len(row) == 1

    def test_nothing_is_left_running_and_no_attempt_ran_twice(self, site: Site) -> None:
        assert _rows(site, "status IN ('pending', 'running')") == []
        attempts = Counter((pk, attempt) for pk, attempt, _pid in site.runs())
        assert attempts and set(attempts.values()) == {1}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child the worker has not reaped yet is a zombie: dead all the same.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _rows(site: Site, where: str) -> list[tuple[Any, ...]]:
    """Ids and handlers of the actions matching ``where``, read from the database."""
    return pg(
        f"SELECT id, handler FROM async_actions_action WHERE {where}",
        dbname=site.env["AA_SCALED_DB"],
    )
