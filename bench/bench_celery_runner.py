"""The CeleryRunner against plain Celery tasks on the same worker, in the same run.

One ``celery -A bench.celery_runner_app worker --pool prefork --concurrency 2`` process
runs both: no-op actions (``demo.noop`` through ``service.start`` and the CeleryRunner,
the demo's ``celery`` profile on PostgreSQL, Redis broker) and a plain no-op Celery task
(``send_task``; its body pushes ``time.time()`` to a Redis list so the bench sees it).

1. Throughput: N no-op starts, from the first start to the last finish (ours:
   ``finished_at`` of the last action; plain: the last body's time), median of repeats;
   and drain-only: the worker told to stop consuming the queue (``cancel_consumer``),
   the N messages sent, then timed from ``add_consumer`` to the last finish.
2. Start latency with an idle worker, one at a time: the time just before the call to
   the body starting (ours: ``started_at``, written by the claim; plain: the body's
   ``time.time()``).
3. Caller cost: how long the starting process spends in the call (ours:
   ``service.start`` in autocommit, so the INSERT, the commit and the dispatch; plain:
   ``send_task``).

Usage: python bench/bench_celery_runner.py [--actions 200] [--repeat 3] [--starts 30]
Needs PostgreSQL and Redis on 127.0.0.1 and the celery extra. Writes the
bench:celery_runner section of docs/performance.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import ROOT, machine, percentile, record, spied, verdict, write_section

TARGET_THROUGHPUT_RATIO, TARGET_START_RATIO = 0.7, 1.5
RUN = uuid.uuid4().hex[:8]
DATABASE = f"aa_bench_celery_{RUN}"
QUEUE = f"aa-bench-{RUN}"
NODE = f"aa-bench-{RUN}@{socket.gethostname()}"  # the worker's name, for remote control
REDIS_URL = os.environ.get("BENCH_CELERY_REDIS_URL", "redis://127.0.0.1:6379/12")
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": "example_project.settings",
    "DEMO_PROFILE": "celery",
    "DEMO_PG_NAME": DATABASE,
    "DEMO_CELERY_BROKER_URL": REDIS_URL,
    "BENCH_REDIS_URL": REDIS_URL,
    "DEMO_CELERY_QUEUE": QUEUE,
    "DJANGO_DEBUG": "0",
    "PYTHONPATH": str(ROOT),
}


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

    settings.LOGGING = {"version": 1}
    settings.ASYNC_ACTIONS = {
        **settings.ASYNC_ACTIONS,
        # One bench process starts everything: no per-owner limits.
        "MAX_ACTIVE_PER_OWNER": None,
        "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": None,
        "MAX_RUNNING_PER_OWNER": None,
    }


def _worker(log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_runner_app", "worker",
         "--pool", "prefork", "--concurrency", "2", "-Q", QUEUE, "--loglevel", "WARNING",
         "-n", NODE, "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=ROOT, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return process


def _wait_ready(rounds: int = 600) -> None:
    """Until the worker ran one plain task (it consumes the queue, its pool is up)."""
    key = f"aa-bench:{RUN}:ready"
    _send_plain(key)
    for _ in range(rounds):
        if _redis().llen(key):
            _redis().delete(key)
            return
        time.sleep(0.1)
    raise SystemExit("the Celery worker did not start")


_client = None


def _redis():  # type: ignore[no-untyped-def]
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(REDIS_URL)
    return _client


PLAIN, PLAIN_LATE = "bench.plain_noop", "bench.plain_noop_late"


def _send_plain(key: str, task: str = PLAIN) -> None:
    from celery import current_app

    current_app.send_task(task, (key,))


def _ours_throughput(actions: int) -> tuple[float, list[float]]:
    from async_actions import service

    ids, costs = [], []
    t0 = time.time()
    for i in range(actions):
        began = time.perf_counter()
        result = service.start("demo.noop", {}, session_key=f"bench-{i}")
        costs.append((time.perf_counter() - began) * 1000)
        assert result.ok, result
        ids.append(result.action.pk)
    return actions / (_succeeded(ids)["last"].timestamp() - t0), costs


def _succeeded(ids: list) -> dict[str, Any]:
    """Wait until the actions ``ids`` ended, all succeeded; their first start and last
    finish (``first``, ``last``)."""
    from django.db.models import Max, Min

    from async_actions.models import Action

    deadline = time.monotonic() + 300
    while Action.objects.filter(pk__in=ids, finished_at__isnull=True).exists():
        if time.monotonic() > deadline:
            raise SystemExit("actions unfinished after 300 s")
        time.sleep(0.02)
    assert Action.objects.filter(pk__in=ids, status="succeeded").count() == len(ids)
    return Action.objects.filter(pk__in=ids).aggregate(
        first=Min("started_at"), last=Max("finished_at")
    )


def _plain_throughput(tasks: int) -> tuple[float, list[float]]:
    key = f"aa-bench:{RUN}:{uuid.uuid4().hex[:6]}"
    costs = []
    t0 = time.time()
    for _ in range(tasks):
        began = time.perf_counter()
        _send_plain(key)
        costs.append((time.perf_counter() - began) * 1000)
    deadline = time.monotonic() + 300
    while _redis().llen(key) < tasks:
        if time.monotonic() > deadline:
            raise SystemExit("plain tasks unfinished after 300 s")
        time.sleep(0.02)
    last = max(float(t) for t in _redis().lrange(key, 0, -1))
    _redis().delete(key)
    return tasks / (last - t0), costs


CPU_PARTS = ("worker main process", "worker pool processes", "PostgreSQL", "Redis")


def _cpu_seconds(worker_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) spent so far by the worker's main process, its pool
    processes (its process group), the PostgreSQL backends serving the bench's
    database, and the Redis server, read from ``/proc`` (empty elsewhere). Redis is
    shared with anything else running on the machine."""
    out = dict.fromkeys(CPU_PARTS, 0.0)
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(fields[2]) == worker_pid:  # the worker's process group
            part = CPU_PARTS[0] if int(entry.name) == worker_pid else CPU_PARTS[1]
        elif command.startswith("postgres:") and DATABASE in command:
            part = CPU_PARTS[2]
        elif command.startswith("redis-server"):
            part = CPU_PARTS[3]
        else:
            continue
        out[part] += seconds
    return out


def _cpu_per_item(worker_pid: int, count: int, drain: Callable[[], Any]) -> tuple[Any, dict]:
    """``drain()``'s result and the CPU ms per item each part spent meanwhile."""
    before = _cpu_seconds(worker_pid)
    result = drain()
    after = _cpu_seconds(worker_pid)
    return result, {part: (after[part] - before[part]) * 1000 / count for part in before}


def _consume(on: bool) -> float:
    """Tell the worker to start (``add_consumer``) or stop (``cancel_consumer``)
    consuming the queue, through Celery's remote control; the time just before."""
    from celery import current_app

    control = current_app.control
    command = control.add_consumer if on else control.cancel_consumer
    began = time.time()
    replies = command(QUEUE, destination=[NODE], reply=True, timeout=10)
    if not any("ok" in reply.get(NODE, {}) for reply in replies or ()):
        raise SystemExit(f"the worker did not confirm {command.__name__}: {replies}")
    return began


def _held(count: int) -> None:
    """The queue holds exactly the ``count`` messages just sent: none was taken."""
    waiting = _redis().llen(QUEUE)
    if waiting != count:
        raise SystemExit(f"{waiting} messages wait in {QUEUE}, not {count}")


def _ours_drain(actions: int) -> tuple[float, float]:
    """Drain-only throughput of ours: the CeleryRunner's own messages (``service.start``,
    the handler's routing, the default queue here) sent while the worker does not
    consume the queue; actions per second from ``add_consumer`` to the last
    ``finished_at``, and the ms from ``add_consumer`` to the first ``started_at``."""

    from async_actions import service

    _consume(False)
    ids = []
    for i in range(actions):
        result = service.start("demo.noop", {}, session_key=f"drain-{i}")
        assert result.ok, result
        ids.append(result.action.pk)
    _held(actions)
    released = _consume(True)
    ends = _succeeded(ids)
    rate = actions / (ends["last"].timestamp() - released)
    return rate, (ends["first"].timestamp() - released) * 1000


def _plain_drain(tasks: int, task: str = PLAIN) -> tuple[float, float]:
    """The same for a plain task: ``send_task`` while the worker does not consume the
    queue; tasks per second from ``add_consumer`` to the last body's time, and the ms
    to the first body's."""
    key = f"aa-bench:{RUN}:{uuid.uuid4().hex[:6]}"
    _consume(False)
    for _ in range(tasks):
        _send_plain(key, task)
    _held(tasks)
    released = _consume(True)
    deadline = time.monotonic() + 300
    while _redis().llen(key) < tasks:
        if time.monotonic() > deadline:
            raise SystemExit("drained plain tasks unfinished after 300 s")
        time.sleep(0.02)
    times = [float(t) for t in _redis().lrange(key, 0, -1)]
    _redis().delete(key)
    return tasks / (max(times) - released), (min(times) - released) * 1000


def _ours_start_latency(samples: int) -> list[float]:
    from async_actions import service
    from async_actions.models import Action

    out = []
    for i in range(samples):
        t0 = time.time()
        result = service.start("demo.noop", {}, session_key=f"latency-{i}")
        pk = result.action.pk
        while not Action.objects.filter(pk=pk, finished_at__isnull=False).exists():
            time.sleep(0.005)
        started = Action.objects.get(pk=pk).started_at
        out.append((started.timestamp() - t0) * 1000)
        time.sleep(0.1)  # the worker idle again: measure the idle path
    return out


def _plain_start_latency(samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        key = f"aa-bench:{RUN}:{uuid.uuid4().hex[:6]}"
        t0 = time.time()
        _send_plain(key)
        while not _redis().llen(key):
            time.sleep(0.005)
        out.append((float(_redis().lindex(key, 0)) - t0) * 1000)
        _redis().delete(key)
        time.sleep(0.1)
    return out


def _cpu_table(cpu: dict[str, list[dict[str, float]]], count: int, repeat: int) -> str:
    """Where a drained item's CPU goes, per process, median of the drain-only passes."""
    if not cpu["ours"] or not cpu["ours"][0]:
        return "(CPU per process: /proc is not available here.)"

    def cell(side: str, part: str) -> str:
        return f"{statistics.median(run[part] for run in cpu[side]):.2f} ms"

    def total(side: str) -> float:
        return statistics.median(sum(run.values()) for run in cpu[side])

    rows = [
        f"| {part} | {cell('ours', part)} | {cell('plain', part)} | {cell('late', part)} |"
        for part in CPU_PARTS
    ]
    rows.append(
        f"| all | {total('ours'):.2f} ms | {total('plain'):.2f} ms | {total('late'):.2f} ms |"
    )
    return "\n".join(
        [
            f"CPU (user + system) per item during the drain-only passes ({count} items, "
            f"median of {repeat}), from /proc; with {os.cpu_count()} cores, the sum bounds "
            "throughput at cores / CPU per item:",
            "",
            "| process | CeleryRunner action | plain task | plain task, our options |",
            "| --- | ---: | ---: | ---: |",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    _admin(f'CREATE DATABASE "{DATABASE}"')
    log = Path(tempfile.mkdtemp(prefix="aa-bench-celery-")) / "worker.log"
    worker = None
    try:
        _setup_django()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        worker = _worker(log)
        _wait_ready()
        _ours_throughput(20)  # warm-up: both pool processes imported, connections open
        _plain_throughput(20)
        ours, plain, ours_cost, plain_cost = [], [], [], []
        ours_drains: list[tuple[float, float]] = []
        plain_drains: list[tuple[float, float]] = []
        late_drains: list[float] = []
        cpu: dict[str, list[dict[str, float]]] = {"ours": [], "plain": [], "late": []}
        for _ in range(args.repeat):  # interleaved, so load drifts hit both sides alike
            rate, costs = _ours_throughput(args.actions)
            ours.append(rate)
            ours_cost += costs
            rate, costs = _plain_throughput(args.actions)
            plain.append(rate)
            plain_cost += costs
            drained, used = _cpu_per_item(
                worker.pid, args.actions, partial(_ours_drain, args.actions)
            )
            ours_drains.append(drained)
            cpu["ours"].append(used)
            drained, used = _cpu_per_item(
                worker.pid, args.actions, partial(_plain_drain, args.actions)
            )
            plain_drains.append(drained)
            cpu["plain"].append(used)
            drained, used = _cpu_per_item(
                worker.pid, args.actions, partial(_plain_drain, args.actions, PLAIN_LATE)
            )
            late_drains.append(drained[0])
            cpu["late"].append(used)
        ours_start = _ours_start_latency(args.starts)
        plain_start = _plain_start_latency(args.starts)
        if os.environ.get("BENCH_PROFILE"):  # the worker and its pool, a pass of its own
            with spied(worker.pid, subprocesses=True):
                _ours_throughput(args.actions)
        connection.close()
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        _admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        _redis().delete(QUEUE)

    rate_ours, rate_plain = statistics.median(ours), statistics.median(plain)
    drain_ours = statistics.median(rate for rate, _ in ours_drains)
    drain_plain = statistics.median(rate for rate, _ in plain_drains)
    pickup_ours = statistics.median(ms for _, ms in ours_drains)
    pickup_plain = statistics.median(ms for _, ms in plain_drains)
    drain_late = statistics.median(late_drains)
    cpu_table = _cpu_table(cpu, args.actions, args.repeat)
    p50_ours, p50_plain = percentile(ours_start, 50), percentile(plain_start, 50)
    cost_ours, cost_plain = percentile(ours_cost, 50), percentile(plain_cost, 50)
    body = f"""
## CeleryRunner vs plain Celery tasks, same worker

`python bench/bench_celery_runner.py` — one `celery -A bench.celery_runner_app worker
--pool prefork --concurrency 2` runs both sides: no-op actions (`demo.noop`, the demo's
`celery` profile: PostgreSQL, Redis broker and channel layer) and a plain no-op Celery
task whose body pushes its time to a Redis list. Same machine, same run, interleaved.

| figure | CeleryRunner | plain Celery task | ratio |
| --- | ---: | ---: | ---: |
| no-op throughput, {args.actions} starts, median of {args.repeat} | \
{rate_ours:.0f} actions/s | {rate_plain:.0f} tasks/s | {rate_ours / rate_plain:.2f}× |
| no-op throughput, drain-only, {args.actions} queued, median of {args.repeat} | \
{drain_ours:.0f} actions/s | {drain_plain:.0f} tasks/s | {drain_ours / drain_plain:.2f}× |
| drain-only, the plain task with `run_action`'s `acks_late` and `reject_on_worker_lost` | \
| {drain_late:.0f} tasks/s | {drain_late / drain_plain:.2f}× of plain |
| start latency, idle worker, p50 of {len(ours_start)} | {p50_ours:.1f} ms | \
{p50_plain:.1f} ms | {p50_ours / p50_plain:.1f}× |
| start latency p90 | {percentile(ours_start, 90):.1f} ms | \
{percentile(plain_start, 90):.1f} ms | |
| caller cost per start, p50 | {cost_ours:.2f} ms | {cost_plain:.2f} ms | \
{cost_ours / cost_plain:.1f}× |


{cpu_table}

Throughput runs: ours {", ".join(f"{r:.0f}" for r in ours)}; plain \
{", ".join(f"{r:.0f}" for r in plain)}.
Drain-only runs, alternated with those: ours \
{", ".join(f"{r:.0f}" for r, _ in ours_drains)}; plain \
{", ".join(f"{r:.0f}" for r, _ in plain_drains)}. Drain-only: the worker stops consuming
the queue (Celery's remote control `cancel_consumer`), the messages are sent (ours by
`service.start` and the CeleryRunner, plain by `send_task`), then timed from `add_consumer`
to the last finish, so the caller's start cost is left out; that time includes the
worker's pick-up after `add_consumer` (to the first body, median: ours {pickup_ours:.0f} ms,
plain {pickup_plain:.0f} ms). Start latency is the time just before the call
to the body starting (ours: `started_at`, written by the claim). Caller cost is the time
the starting process spends in `service.start` (the INSERT, which stores the message's
id, and its commit, then the send with the handler and `run_after` the start knows) against
`send_task` alone. What an action adds on the worker: the claim (a conditional
`UPDATE`), the supervisor's registration, the final write and the final push through the
channel layer; the plain task does one Redis `RPUSH`.

Machine: {machine()}; PostgreSQL and Redis on loopback, shared with the worker; load
average {load:.1f} as the run began (every round trip to PostgreSQL is slower on a busy
machine, and an action makes several where the plain task makes none).
"""
    print(body)
    record(
        "celery_runner",
        [
            {
                "figure": "no-op throughput, CeleryRunner / plain Celery tasks, prefork -c 2",
                "ours": f"{rate_ours:.0f} actions/s",
                "peer": f"{rate_plain:.0f} tasks/s (plain Celery)",
                "ratio": f"{rate_ours / rate_plain:.2f}×",
                "target": f"≥ {TARGET_THROUGHPUT_RATIO:g}×",
                "verdict": verdict(rate_ours / rate_plain >= TARGET_THROUGHPUT_RATIO),
                "key": "celery_throughput",
                "profile": "py-spy",  # the worker's pool, a pass of its own
            },
            {
                "figure": "no-op throughput, drain-only (queue filled, then released), "
                "CeleryRunner / plain Celery tasks, prefork -c 2",
                "ours": f"{drain_ours:.0f} actions/s",
                "peer": f"{drain_plain:.0f} tasks/s (plain Celery)",
                "ratio": f"{drain_ours / drain_plain:.2f}×",
                "target": "",
                "key": "celery_drain_throughput",
            },
            {
                "figure": "start latency p50, idle Celery worker",
                "ours": f"{p50_ours:.1f} ms",
                "peer": f"{p50_plain:.1f} ms (plain Celery)",
                "ratio": f"{p50_ours / p50_plain:.1f}×",
                "target": "",
            },
            {
                "figure": "service.start() cost / send_task(), in the caller, p50",
                "ours": f"{cost_ours:.2f} ms",
                "peer": f"{cost_plain:.2f} ms",
                "ratio": f"{cost_ours / cost_plain:.2f}×",
                "target": f"≤ {TARGET_START_RATIO:g}×",
                "verdict": verdict(cost_ours / cost_plain <= TARGET_START_RATIO),
            },
        ],
    )
    if not args.no_write:
        write_section("celery_runner", body)


if __name__ == "__main__":
    main()
