"""The fan-out bench's handlers without the sockets: what their progress costs SQLite.

``--actions`` ``bench.ticker`` actions at 10 Hz in this process, on the embedded shape
(ThreadRunner, SQLite in WAL mode, bench/settings_fanout.py) and no channel layer.
Reported: how long ``set_progress`` takes in the handler threads (p50, p99, max), how
many progress ``UPDATE`` statements and explicit transactions reached SQLite, and how
long the actions took against the time they ask for. A handler thread that writes its
own row waits for SQLite's single write lock behind every other writer; the supervisor
writing them all in one transaction per interval (``progress.store_progress``) does not.

Usage: python bench/bench_fanout_writes.py [--actions 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TMP = Path(tempfile.mkdtemp(prefix="aa-bench-fanout-writes-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings_fanout")
os.environ["DEMO_SQLITE_PATH"] = str(TMP / "db.sqlite3")
os.environ["DJANGO_DEBUG"] = "0"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db.backends.signals import connection_created  # noqa: E402

import bench.actions  # noqa: E402, F401  (registers bench.ticker)
from async_actions import service  # noqa: E402
from async_actions.context import ActionContext  # noqa: E402
from async_actions.models import Action  # noqa: E402
from bench._common import machine, percentile  # noqa: E402

counts = {"updates": 0, "commits": 0}
lock = threading.Lock()


def _count_updates(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    if sql.startswith('UPDATE "async_actions_action" SET "percent"'):
        with lock:
            counts["updates"] += 1
    return execute(sql, params, many, context)


def _count_commits(statement: str) -> None:
    if statement.upper().startswith("COMMIT"):
        with lock:
            counts["commits"] += 1


def _watch(sender: Any, connection: Any, **kwargs: Any) -> None:
    connection.execute_wrappers.append(_count_updates)
    connection.connection.set_trace_callback(_count_commits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    settings.ASYNC_ACTIONS = {
        **settings.ASYNC_ACTIONS,
        "RUN_WITHOUT_STARTUP": True,
        "CHANNEL_LAYER": None,
    }
    connection_created.connect(_watch)
    durations: list[float] = []
    set_progress = ActionContext.set_progress

    def timed(self: ActionContext, *a: Any, **k: Any) -> None:
        started = time.perf_counter()
        set_progress(self, *a, **k)
        durations.append((time.perf_counter() - started) * 1000)

    ActionContext.set_progress = timed  # type: ignore[method-assign]
    go = TMP / "go"
    request = {"hz": 10, "seconds": args.seconds, "go_file": str(go)}
    ids = [
        service.start("bench.ticker", request, session_key="bench").action.pk
        for _ in range(args.actions)
    ]
    while Action.objects.filter(status="running").count() < args.actions:
        time.sleep(0.1)
    counts.update(updates=0, commits=0)
    started, cpu = time.monotonic(), time.process_time()
    go.touch()  # every action ticks from now
    while Action.objects.filter(pk__in=ids, status__in=["pending", "running"]).exists():
        time.sleep(0.1)
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    statuses = sorted(set(Action.objects.filter(pk__in=ids).values_list("status", flat=True)))
    print(
        json.dumps(
            {
                "actions": args.actions,
                "asked_s": args.seconds,
                "took_s": round(wall, 1),
                "process_cpu_s": round(cpu, 1),
                "set_progress_calls": len(durations),
                "set_progress_ms_p50_p99_max": [
                    round(percentile(durations, 50), 3),
                    round(percentile(durations, 99), 2),
                    round(max(durations), 1),
                ],
                "progress_updates": counts["updates"],
                "explicit_transactions": counts["commits"],
                "statuses": statuses,
                "machine": machine(),
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)  # the pool's threads are done; skip the runner's shutdown wait


if __name__ == "__main__":
    main()
