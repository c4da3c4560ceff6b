"""Scaled out for real: two daphne processes, two db_worker processes, PostgreSQL, Redis.

Actions are started through the API of both servers and run by workers in other
processes; a WebSocket on server A sees progress of an action a worker publishes
through Redis; a cancel reaches a worker in another process; a worker killed with
SIGKILL mid-action is noticed by heartbeat and its action failed or retried. At the
end nothing is left running and no action ran twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import need, postgres_available, redis_available
from tests.servers import OPS_USER, ROOT, ApiUser, Server, daphne, manage, scratch_database, stop

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


class Cluster(ApiUser):
    def __init__(self, env: dict, tmp: Path, token: str, session: str) -> None:
        super().__init__(env, tmp, token, session)
        self.servers: list[Server] = []
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        """A db_worker process, returned once it polls for tasks (not merely spawned)."""
        log_path = self.tmp / f"worker{len(self.workers)}.log"
        log = open(log_path, "w")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "db_worker", "--interval", "0.05",
             "--no-startup-delay", "--no-reload"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.workers.append(worker)
        # django-tasks-db logs this line as it enters its polling loop.
        deadline = time.monotonic() + 120
        while "Starting worker" not in log_path.read_text(errors="replace"):
            if worker.poll() is not None:
                raise AssertionError(f"worker exited with {worker.returncode}: {log_path}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not polling after 120 s: {log_path}")
            time.sleep(0.05)
        return worker

    def api(self, server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.call(server.base, method, path, body)

    def start(self, server: Server, handler: str, **request: Any) -> str:
        return self.start_at(server.base, handler, **request)

    def get(self, pk: str) -> dict:
        return self.get_at(self.servers[0].base, pk)

    def wait(self, pk: str, predicate: Any, timeout: float = 30) -> dict:
        return self.wait_at(self.servers[0].base, pk, predicate, timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    need(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    tmp = tmp_path_factory.mktemp("scaled")
    with scratch_database("aa_scaled") as name:
        yield from _cluster(tmp, name)


def _cluster(tmp: Path, name: str) -> Iterator[Cluster]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_scaled",
        "AA_SCALED_DB": name,
        "AA_REDIS_PREFIX": f"aa-test-{name}",
        "AA_RUN_LOG": str(tmp / "runs.log"),
        "AA_GATE_DIR": str(tmp),  # tests.scaled_lockstep
        "PYTHONPATH": str(ROOT),
    }
    manage(env, "migrate", "--noinput", "-v0")
    token, session = manage(env, "shell", "-c", OPS_USER).split()[-2:]
    cluster = Cluster(env, tmp, token, session)
    with ExitStack() as stack:
        for letter in "ab":
            cluster.servers.append(
                stack.enter_context(daphne(env, tmp / f"daphne-{letter}.log", migrate=False))
            )
        for _ in range(2):
            cluster.start_worker()
        try:
            yield cluster
        finally:
            for worker in cluster.workers:
                stop(worker)


async def _watch_in_lockstep(cluster: Cluster, server: Server, pk: str, steps: int) -> list[dict]:
    """Watch ``pk`` on ``server``, releasing each step of tests.scaled_lockstep in turn.

    Step 1 is released only after the first frame (the snapshot, read after the hub
    joined the group), step i + 1 (the finish after the last) only after step i arrived:
    nothing is published before the tab listens, and no step is merged into a newer one.
    """
    from websockets.asyncio.client import connect

    url = server.base.replace("http://", "ws://") + f"/ws/async-actions/{pk}/"
    headers = {"Cookie": f"sessionid={cluster.session}", "Origin": server.base}
    events: list[dict] = []
    released = 0
    async with connect(url, additional_headers=headers, open_timeout=30) as socket:
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=60))
            assert message["type"] == "update", message
            event = message["action"]
            events.append(event)
            if event["status"] in ("succeeded", "failed", "cancelled"):
                return events
            reached = round(event["percent"] * (steps + 1) / 100)
            if reached == released:  # release the next step, or the finish after the last
                released += 1
                (Path(cluster.env["AA_GATE_DIR"]) / f"{pk}.{released}").touch()


def test_fifty_actions_through_both_servers_each_run_once_by_the_workers(cluster: Cluster):
    a, b = cluster.servers
    ids = [cluster.start(a if i % 2 else b, "tests.scaled_work", steps=3) for i in range(50)]
    finals = [cluster.wait(pk, lambda x: x["status"] == "succeeded") for pk in ids]
    pids = {final["response"]["pid"] for final in finals}
    assert pids <= {w.pid for w in cluster.workers}
    assert len(pids) == 2, "both workers should have taken work"
    runs = Counter(pk for pk, _attempt, _pid in cluster.runs() if pk in set(ids))
    assert set(runs.values()) == {1} and len(runs) == 50


def test_tab_on_server_a_sees_progress_a_worker_publishes(cluster: Cluster) -> None:
    a, b = cluster.servers
    pk = cluster.start(b, "tests.scaled_lockstep", steps=3)
    events = asyncio.run(_watch_in_lockstep(cluster, a, pk, steps=3))
    progress = [e["percent"] for e in events if e["status"] == "running" and e["percent"] > 0]
    seen = [(e["seq"], e["status"], e["percent"]) for e in events]
    assert progress == [25, 50, 75], seen
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert events[-1]["status"] == "succeeded"
    assert events[-1]["percent"] == 100


def test_cancel_through_one_server_stops_the_worker_in_another_process(cluster: Cluster):
    a, b = cluster.servers
    pk = cluster.start(a, "tests.scaled_work", steps=200, delay=0.1)
    cluster.wait(pk, lambda x: x["status"] == "running" and x["percent"] > 0)
    status, body = cluster.api(b, "POST", f"{pk}/cancel/")
    assert status == 202, body
    final = cluster.wait(pk, lambda x: x["status"] != "running", timeout=10)
    assert final["status"] == "cancelled"
    assert final["percent"] < 50


def _running_pid(cluster: Cluster, pk: str) -> int:
    for run_pk, _attempt, pid in reversed(cluster.runs()):
        if run_pk == pk:
            return pid
    raise AssertionError(f"{pk} has not run")


def test_killed_worker_is_noticed_and_its_action_failed_or_retried(cluster: Cluster) -> None:
    a, _b = cluster.servers
    once = cluster.start(a, "tests.scaled_work", steps=400, delay=0.05)
    cluster.wait(once, lambda x: x["status"] == "running" and x["percent"] > 0)
    os.kill(_running_pid(cluster, once), signal.SIGKILL)
    cluster.start_worker()  # what a supervisor would do
    failed = cluster.wait(once, lambda x: x["status"] != "running", timeout=20)
    assert failed["status"] == "failed"
    assert "worker lost" in failed["error"]

    twice = cluster.start(a, "tests.scaled_retry", steps=30, delay=0.05)
    cluster.wait(twice, lambda x: x["status"] == "running" and x["percent"] > 0)
    first_pid = _running_pid(cluster, twice)
    os.kill(first_pid, signal.SIGKILL)
    cluster.start_worker()
    final = cluster.wait(twice, lambda x: x["status"] in ("succeeded", "failed"), timeout=30)
    assert final["status"] == "succeeded"
    assert final["attempt"] == 2
    assert final["response"]["pid"] != first_pid


def test_os_exit_in_a_handler_ends_only_its_worker_and_the_action_fails(cluster: Cluster):
    """A handler that ends its process (``os._exit``, a crash in C code) takes down only
    the ``db_worker`` running it: both servers keep answering, the sweep fails the action.
    tests/test_crash_isolation.py shows the embedded server dying of the same handler."""
    a, b = cluster.servers
    trigger = cluster.tmp / "crash-now"
    pk = cluster.start(a, "tests.crash", trigger=str(trigger), code=70)
    cluster.wait(pk, lambda x: x["status"] == "running")
    pid = _running_pid(cluster, pk)
    worker = next(w for w in cluster.workers if w.pid == pid)
    trigger.touch()
    assert worker.wait(timeout=30) == 70
    cluster.start_worker()  # what a supervisor would do
    failed = cluster.wait(pk, lambda x: x["status"] != "running", timeout=20)
    assert failed["status"] == "failed"
    assert "worker lost" in failed["error"]
    assert a.process.poll() is None and b.process.poll() is None
    assert cluster.api(b, "GET", f"{pk}/")[0] == 200


def test_nothing_is_left_running_and_no_attempt_ran_twice(cluster: Cluster) -> None:
    status, body = cluster.api(cluster.servers[0], "GET", "?status=pending,running")
    assert status == 200 and body["count"] == 0, body
    attempts = Counter((pk, attempt) for pk, attempt, _pid in cluster.runs())
    assert attempts and set(attempts.values()) == {1}
