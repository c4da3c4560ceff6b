"""Scaled out on PostgreSQL and Redis: progress latency across processes, and throughput.

1. Latency from ``ctx.set_progress`` in this process to a WebSocket client of a separate
   daphne process: set_progress -> Publisher -> Redis channel layer -> daphne ->
   ActionConsumer -> TCP WebSocket frame. ``PUSH_INTERVAL`` is 0 in the publishing
   process so every update is pushed; one update at a time so nothing queues.
2. Throughput: no-op actions per second with 2 ``db_worker`` processes (django-tasks-db
   on PostgreSQL), from the first start to the last finish, median of repetitions; and
   drain-only: the tasks enqueued first on a queue the workers do not listen to, then
   moved to theirs in one UPDATE, timed from that UPDATE to the last task's finish.
3. Start latency with idle workers: ``created_at`` -> ``started_at`` of one action at a
   time (bounded below by the workers' ``--interval``, 0.05 s here).

Runs the demo project's ``scaled`` profile in a fresh database it drops afterwards.
Usage: python bench/bench_scaleout.py [--updates 1000] [--actions 300] [--repeat 3]
Needs PostgreSQL and Redis on 127.0.0.1. Writes the bench:scaleout section of
docs/performance.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (
    ROOT,
    collecting_runner,
    machine,
    percentile,
    record,
    start_daphne,
    stop,
    top_entries,
    verdict,
    write_section,
)

DATABASE = f"aa_bench_{uuid.uuid4().hex[:8]}"
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": "example_project.settings",
    "DEMO_PROFILE": "scaled",
    "DEMO_PG_NAME": DATABASE,
    "DJANGO_DEBUG": "0",
    "PYTHONPATH": str(ROOT),
}
TARGET_P50_MS = 10.0
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_START_RATIO = 1.5
#: The workers' queue, and the one the drain-only runs fill while no worker listens to it.
WORKERS_QUEUE, HELD_QUEUE = "default", "aa-bench-held"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres") as conn:
        conn.autocommit = True
        conn.execute(sql)


def _setup_django() -> None:
    os.environ.update({k: v for k, v in ENV.items() if k.startswith(("DJANGO", "DEMO"))})
    import django

    django.setup()
    from django.conf import settings

    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "PUSH_INTERVAL": 0.0}
    settings.LOGGING = {"version": 1}
    # The backend accepts tasks for the held queue (this process only; the workers never
    # load a task while it is there).
    settings.TASKS = {
        alias: {**options, "QUEUES": [WORKERS_QUEUE, HELD_QUEUE]}
        for alias, options in settings.TASKS.items()
    }
    from async_actions.conf import action_settings
    from async_actions.tasks_compat import task_backends

    action_settings.reload()
    assert HELD_QUEUE in task_backends["default"].queues  # not built before the change


async def _latency(port: int, updates: int, warmup: int) -> list[float]:
    from asgiref.sync import sync_to_async
    from django.contrib.sessions.backends.db import SessionStore
    from websockets.asyncio.client import connect

    from async_actions.context import ActionContext
    from async_actions.executor import claim
    from async_actions.models import Action
    from async_actions.progress import Publisher

    session = SessionStore()
    await sync_to_async(session.save)()
    action = await Action.objects.acreate(handler="demo.noop", session_key=session.session_key)
    action = await sync_to_async(claim)(action.pk)
    ctx = ActionContext(action, Publisher(action))
    url = f"ws://127.0.0.1:{port}/ws/async-actions/{action.pk}/"
    headers = {"Cookie": f"sessionid={session.session_key}", "Origin": f"http://127.0.0.1:{port}"}
    loop = asyncio.get_running_loop()
    arrived = threading.Event()
    samples: list[float] = []
    async with connect(url, additional_headers=headers, open_timeout=10) as socket:
        await asyncio.wait_for(socket.recv(), 10)  # the snapshot
        total = updates + warmup

        def worker() -> None:
            for i in range(total):
                arrived.clear()
                ctx.set_progress(100 * i / total, f"update {i}", {"t": time.perf_counter()})
                if not arrived.wait(5):
                    raise SystemExit(f"update {i} did not arrive within 5 s")

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        for i in range(total):
            text = await asyncio.wait_for(socket.recv(), 10)
            now = time.perf_counter()
            sent = json.loads(text)["action"]["data"]["t"]
            if i >= warmup:
                samples.append((now - sent) * 1000)
            loop.call_soon(arrived.set)
        await loop.run_in_executor(None, thread.join, 10)
    return samples


def _wait_finished(ids: list, timeout: float = 300) -> None:
    from async_actions.models import Action

    deadline = time.monotonic() + timeout
    while Action.objects.filter(pk__in=ids, finished_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"actions unfinished after {timeout}s")
        time.sleep(0.02)


def _throughput(actions: int) -> tuple[float, list[float]]:
    """Actions per second from the first start to the last finish; and each
    ``service.start()``'s cost in this process, ms."""
    from async_actions import service
    from async_actions.models import Action

    ids, costs = [], []
    t0 = time.perf_counter()
    for i in range(actions):
        # Many visitors: one owner's actions would wait for MAX_RUNNING_PER_OWNER.
        before = time.perf_counter()
        result = service.start("demo.noop", {}, session_key=f"bench-{i}")
        costs.append((time.perf_counter() - before) * 1000)
        assert result.ok, result
        ids.append(result.action.pk)
    _wait_finished(ids)
    elapsed = time.perf_counter() - t0
    assert Action.objects.filter(pk__in=ids, status="succeeded").count() == actions
    return actions / elapsed, costs


def _peer_throughput(jobs: int) -> tuple[float, list[float]]:
    """The same for a plain no-op task on the same backend and workers: jobs per second
    from the first ``enqueue()`` to the last result, and each ``enqueue()``'s cost, ms."""
    from django_tasks_db.models import DBTaskResult

    from bench.tasks_peer import noop

    ids, costs = [], []
    t0 = time.perf_counter()
    for _ in range(jobs):
        before = time.perf_counter()
        result = noop.enqueue()
        costs.append((time.perf_counter() - before) * 1000)
        ids.append(result.id)
    deadline = time.monotonic() + 300
    while DBTaskResult.objects.filter(id__in=ids, finished_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise SystemExit("peer tasks unfinished after 300s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    assert DBTaskResult.objects.filter(id__in=ids, status="SUCCESSFUL").count() == jobs
    return jobs / elapsed, costs


@contextmanager
def _runner_queue(name: str) -> Iterator[None]:
    """The TasksRunner enqueues on ``name`` (its ``TASKS_QUEUE`` setting) in the block."""
    from django.conf import settings

    from async_actions.conf import action_settings

    previous = settings.ASYNC_ACTIONS
    settings.ASYNC_ACTIONS = {**previous, "TASKS_QUEUE": name}
    action_settings.reload()
    try:
        yield
    finally:
        settings.ASYNC_ACTIONS = previous
        action_settings.reload()


def _drained(task_ids: list[str]) -> tuple[float, float]:
    """Release the held tasks ``task_ids`` to the workers in one UPDATE of their queue
    name, wait for the last to finish; tasks per second from the UPDATE to the last
    task's ``finished_at`` (django-tasks-db's own rows, for both sides), and the ms from
    the UPDATE to the first task's ``started_at`` (the workers' pick-up, in that time)."""
    from django.db.models import Max, Min
    from django_tasks_db.models import DBTaskResult

    held = DBTaskResult.objects.filter(id__in=task_ids, queue_name=HELD_QUEUE, status="READY")
    assert held.count() == len(task_ids), "a held task is missing or was taken"
    released = time.time()
    moved = held.update(queue_name=WORKERS_QUEUE)
    assert moved == len(task_ids), moved
    deadline = time.monotonic() + 300
    while DBTaskResult.objects.filter(id__in=task_ids, finished_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise SystemExit("drained tasks unfinished after 300s")
        time.sleep(0.02)
    done = DBTaskResult.objects.filter(id__in=task_ids)
    assert done.filter(status="SUCCESSFUL").count() == len(task_ids)
    ends = done.aggregate(first=Min("started_at"), last=Max("finished_at"))
    rate = len(task_ids) / (ends["last"].timestamp() - released)
    return rate, (ends["first"].timestamp() - released) * 1000


def _drain(actions: int) -> tuple[float, float]:
    """Drain-only throughput of ours: ``service.start()`` with the TasksRunner routed to
    the held queue, so the actions and their tasks wait as in production, then
    :func:`_drained` on the tasks the runner enqueued."""
    from async_actions import service
    from async_actions.models import Action

    ids = []
    with _runner_queue(HELD_QUEUE):
        for i in range(actions):
            result = service.start("demo.noop", {}, session_key=f"drain-{i}")
            assert result.ok, result
            ids.append(result.action.pk)
    tasks = list(Action.objects.filter(pk__in=ids).values_list("task_id", flat=True))
    assert len(tasks) == actions and all(tasks), "an action names no task"
    drained = _drained(tasks)
    assert Action.objects.filter(pk__in=ids, status="succeeded").count() == actions
    return drained


def _peer_drain(jobs: int) -> tuple[float, float]:
    """Drain-only throughput of the peer: ``enqueue()`` on the held queue, then
    :func:`_drained`."""
    from bench.tasks_peer import noop

    held = noop.using(queue_name=HELD_QUEUE)
    return _drained([str(held.enqueue().id) for _ in range(jobs)])


def _costs(actions: int) -> dict[str, Any]:
    """What one start and one action cost in this process, against the peer's enqueue:
    the SQL statements each sends (BEGIN and COMMIT included) and cProfile runs of
    ``service.start`` and of ``executor.execute`` (the worker's part), top entries."""
    import cProfile

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from async_actions import executor, runners, service
    from bench.tasks_peer import noop

    with CaptureQueriesContext(connection) as ours:
        result = service.start("demo.noop", {}, session_key="bench-count")
    with CaptureQueriesContext(connection) as peer:
        noop.enqueue()
    runner = collecting_runner()
    previous, runners._runner = runners._runner, runner
    try:
        service.start("demo.noop", {}, session_key="bench-count-run")
        with CaptureQueriesContext(connection) as worker:
            executor.execute(runner.ids.pop(), runner=runner)
        starts, runs = cProfile.Profile(), cProfile.Profile()
        for i in range(actions):
            starts.enable()
            service.start("demo.noop", {}, session_key=f"bench-profile-{i}")
            starts.disable()
            runs.enable()
            executor.execute(runner.ids.pop(), runner=runner)
            runs.disable()
    finally:
        runners._runner = previous
    assert result.ok
    return {
        "ours": [q["sql"] for q in ours.captured_queries],
        "peer": [q["sql"] for q in peer.captured_queries],
        "worker": [q["sql"] for q in worker.captured_queries],
        "start_profile": top_entries(starts, 20),
        "run_profile": top_entries(runs, 20),
    }


def _statements(sqls: list[str]) -> str:
    return "\n".join(f"  {sql[:110]}{'…' if len(sql) > 110 else ''}" for sql in sqls)


def _start_latency(samples: int) -> list[float]:
    from async_actions import service
    from async_actions.models import Action

    out = []
    for _ in range(samples):
        result = service.start("demo.noop", {}, session_key="bench")
        _wait_finished([result.action.pk])
        action = Action.objects.get(pk=result.action.pk)
        out.append((action.started_at - action.created_at).total_seconds() * 1000)
        time.sleep(0.1)  # workers idle again: measure the idle path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--actions", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--profile", type=int, default=100, help="actions profiled")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    _admin(f'CREATE DATABASE "{DATABASE}"')
    processes: list[subprocess.Popen] = []
    try:
        _setup_django()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        logs = open(os.devnull, "w")  # noqa: SIM115
        daphne = start_daphne(ENV, Path(os.devnull))
        processes.append(daphne.process)
        latency = asyncio.run(_latency(daphne.port, args.updates, args.warmup))
        spent = _costs(args.profile)  # before the workers start: they would take the tasks

        worker = [sys.executable, "manage.py", "db_worker", "--no-reload"]
        worker += ["--interval", "0.05", "--no-startup-delay"]
        for _ in range(2):
            processes.append(
                subprocess.Popen(worker, cwd=ROOT, env=ENV, stdout=logs, stderr=subprocess.STDOUT)
            )
        _throughput(20)  # warm-up: both workers importing, connections open
        _peer_throughput(20)
        rates, peer_rates, costs, peer_costs = [], [], [], []
        drains: list[tuple[float, float]] = []
        peer_drains: list[tuple[float, float]] = []
        for _ in range(args.repeat):  # alternated, so both see the same machine
            rate, cost = _throughput(args.actions)
            peer_rate, peer_cost = _peer_throughput(args.actions)
            rates.append(rate)
            peer_rates.append(peer_rate)
            costs += cost
            peer_costs += peer_cost
            drains.append(_drain(args.actions))
            peer_drains.append(_peer_drain(args.actions))
        starts = _start_latency(args.starts)
        connection.close()
    finally:
        for process in processes:
            stop(process)
        _admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')

    rate, peer_rate = statistics.median(rates), statistics.median(peer_rates)
    drain_runs, peer_drain_runs = [r for r, _ in drains], [r for r, _ in peer_drains]
    drain, peer_drain = statistics.median(drain_runs), statistics.median(peer_drain_runs)
    pickup = statistics.median(ms for _, ms in drains)
    peer_pickup = statistics.median(ms for _, ms in peer_drains)
    cost, peer_cost = statistics.median(costs), statistics.median(peer_costs)
    p50 = percentile(latency, 50)
    verdict_text = "met: meets the target" if p50 <= TARGET_P50_MS else "MISSED: misses the target"
    body = f"""
## Scaled out: across processes through Redis, and 2 workers

`python bench/bench_scaleout.py` — the demo's `scaled` profile (PostgreSQL, Redis channel
layer, `TasksRunner` on django-tasks-db) in a fresh database.

**Latency** from `ctx.set_progress` in one process to the frame a WebSocket client of a
separate daphne process receives (Redis, daphne, TCP on loopback included;
`PUSH_INTERVAL` 0 so every update is pushed; one update in flight at a time):

| updates | p50 | p90 | p99 | max | target p50 |
| ---: | ---: | ---: | ---: | ---: | --- |
| {len(latency)} | {p50:.2f} ms | {percentile(latency, 90):.2f} ms | \
{percentile(latency, 99):.2f} ms | {max(latency):.2f} ms | \
≤ {TARGET_P50_MS:.0f} ms: {verdict_text.split(": ")[1]} |

**Throughput** of a no-op handler with 2 `db_worker` processes (`--interval 0.05`), from
the first `service.start` to the last finish, {args.actions} actions, {args.repeat} runs,
against the peer: a plain no-op Django task (`bench/tasks_peer.py`) on the same backend and
workers, from the first `enqueue()` to the last result, run alternately with ours:

| | median | runs | cost of one start in the caller, median / p90 |
| --- | ---: | --- | --- |
| ours, `TasksRunner` | **{rate:.0f}/s** | {", ".join(f"{r:.0f}" for r in rates)} | \
{cost:.2f} / {percentile(costs, 90):.2f} ms (`service.start()`) |
| django-tasks-db alone | **{peer_rate:.0f}/s** | {", ".join(f"{r:.0f}" for r in peer_rates)} | \
{peer_cost:.2f} / {percentile(peer_costs, 90):.2f} ms (`enqueue()`) |
| ratio | {rate / peer_rate:.2f}× (target ≥ {TARGET_THROUGHPUT_RATIO:g}×) | | \
{cost / peer_cost:.2f}× (target ≤ {TARGET_START_RATIO:g}×) |

**Drain-only throughput**, the same workers warmed, alternated with the runs above: the
{args.actions} tasks are enqueued first on a queue the workers do not listen to (ours:
`service.start` with the runner's `TASKS_QUEUE` set to it; the peer: `enqueue()` on it),
then moved to the workers' queue in one `UPDATE` of `queue_name`, and timed from that
`UPDATE` to the last task's `finished_at` (django-tasks-db's rows on both sides), so the
caller's start cost is left out. The time includes the workers' pick-up after the
`UPDATE` (up to one poll interval), the same on both sides:

| | median | runs | `UPDATE` → first task started, median |
| --- | ---: | --- | ---: |
| ours, `TasksRunner` | **{drain:.0f}/s** | {", ".join(f"{r:.0f}" for r in drain_runs)} | \
{pickup:.0f} ms |
| django-tasks-db alone | **{peer_drain:.0f}/s** | \
{", ".join(f"{r:.0f}" for r in peer_drain_runs)} | {peer_pickup:.0f} ms |
| ratio | {drain / peer_drain:.2f}× | | |

The machine's 2 cores are shared by this process, both workers, PostgreSQL and Redis.
Our start is one transaction: the owner's limits and backlog counted, the task's INSERT
(its priority from that count), and the action's INSERT carrying the task's id; a
worker's action is
the task's claim and result rows plus our claim (one `UPDATE … RETURNING`), the handler
and the final `UPDATE … RETURNING` with its push through Redis.

What a start and an action cost in the caller and the worker: SQL statements sent (one
start of ours, one `enqueue()` of the peer, one action's claim to finish in a worker;
BEGIN and COMMIT included), then cProfile runs of {args.profile} `service.start()` and
`executor.execute()` calls in one process (cumulative, top entries). On PostgreSQL each
statement is a round trip, which is what the start ratio counts.

```
ours, service.start(): {len(spent["ours"])} statements
{_statements(spent["ours"])}
peer, enqueue(): {len(spent["peer"])} statements
{_statements(spent["peer"])}
ours, executor.execute() in a worker: {len(spent["worker"])} statements
{_statements(spent["worker"])}
```

`service.start()`:

```
{spent["start_profile"]}
```

`executor.execute()` (claim, the no-op handler, finish):

```
{spent["run_profile"]}
```

**Start latency** with idle workers, `created_at` → `started_at`, {len(starts)} actions
one at a time: p50 {percentile(starts, 50):.1f} ms, p90 {percentile(starts, 90):.1f} ms,
max {max(starts):.1f} ms (the workers' poll interval is 50 ms).

Machine: {machine()}; PostgreSQL and Redis on loopback.
"""
    record(
        "scaleout",
        [
            {
                "figure": "set_progress → WebSocket client, across processes via Redis, p50",
                "ours": f"{p50:.2f} ms",
                "peer": "",
                "ratio": "",
                "target": f"≤ {TARGET_P50_MS:.0f} ms",
                "verdict": verdict(p50 <= TARGET_P50_MS),
            },
            {
                "figure": "no-op throughput, TasksRunner / the same tasks-db alone, 2 workers",
                "ours": f"{rate:.0f}/s",
                "peer": f"{peer_rate:.0f}/s",
                "ratio": f"{rate / peer_rate:.2f}×",
                "target": f"≥ {TARGET_THROUGHPUT_RATIO:g}×",
                "verdict": verdict(rate / peer_rate >= TARGET_THROUGHPUT_RATIO),
                "key": "tasks_throughput",
                "profile": "cProfile of executor.execute() (a worker's part: claim, no-op, "
                f"finish), {args.profile} actions in one process:\n{spent['run_profile']}",
            },
            {
                "figure": "no-op throughput, drain-only (queue filled, then released), "
                "TasksRunner / the same tasks-db alone, 2 workers",
                "ours": f"{drain:.0f}/s",
                "peer": f"{peer_drain:.0f}/s",
                "ratio": f"{drain / peer_drain:.2f}×",
                "target": "",
                "key": "tasks_drain_throughput",
            },
            {
                "figure": "service.start() cost / tasks-db enqueue(), in the caller, median",
                "ours": f"{cost:.2f} ms",
                "peer": f"{peer_cost:.2f} ms",
                "ratio": f"{cost / peer_cost:.2f}×",
                "target": f"≤ {TARGET_START_RATIO:g}×",
                "verdict": verdict(cost / peer_cost <= TARGET_START_RATIO),
                "key": "start_cost",
                "profile": f"one service.start(): {len(spent['ours'])} statements, "
                f"enqueue(): {len(spent['peer'])}\n{_statements(spent['ours'])}\n\n"
                f"cProfile of {args.profile} service.start() calls:\n{spent['start_profile']}",
            },
        ],
    )
    print(body)
    if not args.no_write:
        write_section("scaleout", body)


if __name__ == "__main__":
    main()
