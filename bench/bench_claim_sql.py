"""PostgreSQL's own CPU per claim statement, by how it is sent and what it reads (issue 18).

Runs the claim's UPDATE (``lifecycle._claim_sql`` under ``MAX_RUNNING_PER_OWNER``, as
``_claim_in_one_trip`` sends it) N times on one connection and reads the server
backend's CPU from /proc (so run it on the database's machine), for: the one-trip
string as sent today (the owner's lock, then the UPDATE; client-side binding, planned
each time); the same two statements server-side prepared in one pipeline and
transaction; the UPDATE alone, bound and prepared; without the cap's subquery; with
``RETURNING id`` only. Each claim is undone by a plain UPDATE, whose cost is measured
alone and subtracted; the least of ``--rounds`` interleaved rounds is printed.

Not part of ``make bench``: a tool for choosing, on a scratch database migrated with
the test settings (the table's size and its running rows are what you put there).

Usage: AA_TEST_DB=postgres AA_PG_NAME=<scratch db> DJANGO_SETTINGS_MODULE=tests.settings \
    python bench/bench_claim_sql.py [--n 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import django

    django.setup()
    from django.db import connection
    from django.utils import timezone

    from async_actions import fairness, lifecycle
    from async_actions.models import Action

    action = Action.objects.create(handler="demo.noop", session_key="bench-claim")
    connection.ensure_connection()
    raw = connection.connection
    raw.autocommit = True
    pid = raw.execute("SELECT pg_backend_pid()").fetchone()[0]
    table = connection.ops.quote_name(Action._meta.db_table)
    update = f"{lifecycle._claim_sql('postgresql', '*', 2)} RETURNING {lifecycle._columns()}"
    lock = fairness.lock_pending_sql()
    reset = f"UPDATE {table} SET status = %s WHERE id = %s"
    pk = action.pk

    def params() -> list[Any]:
        now = timezone.now()
        return ["running", now, now, pk, "pending", now, now]

    def undo() -> None:
        raw.execute(reset, ["pending", pk], prepare=True)

    def as_today() -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"{lock}; {update}", [pk, "pending", *params()])
        undo()

    def prepared() -> None:
        with raw.pipeline(), raw.transaction():
            raw.execute(lock, [pk, "pending"], prepare=True)
            cur = raw.execute(update, params(), prepare=True)
        assert cur.fetchone() is not None
        undo()

    def update_bound() -> None:
        with connection.cursor() as cursor:
            cursor.execute(update, params())
        undo()

    def update_prepared() -> None:
        raw.execute(update, params(), prepare=True)
        undo()

    def run(name: str, step: Callable[[], None]) -> float:
        for _ in range(50):
            step()
        before, start = _cpu(pid), time.perf_counter()
        for _ in range(args.n):
            step()
        per = (_cpu(pid) - before) / args.n * 1000
        wall = (time.perf_counter() - start) / args.n * 1000
        print(f"{name:32} backend CPU {per:.3f} ms/claim, wall {wall:.3f} ms")
        return per

    no_cap = f"{lifecycle._claim_sql('postgresql', '', 0)} RETURNING {lifecycle._columns()}"
    id_only = f"{lifecycle._claim_sql('postgresql', '*', 2)} RETURNING id"

    def bound(sql: str) -> Callable[[], None]:
        def step() -> None:
            with connection.cursor() as cursor:
                cursor.execute(sql, params())
            undo()

        return step

    variants = {
        "undo alone": undo,
        "as today": as_today,
        "lock+UPDATE prepared, pipeline": prepared,
        "UPDATE bound": bound(update),
        "UPDATE prepared": update_prepared,
        "UPDATE no cap bound": bound(no_cap),
        "UPDATE RETURNING id": bound(id_only),
    }
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, step in variants.items():
            best[name] = min(best.get(name, 1e9), run(name, step))
    base = best.pop("undo alone")
    print("least of each, undo subtracted (ms of backend CPU per claim):")
    for name, value in best.items():
        print(f"  {name:32} {value - base:.3f}")
    action.delete()


if __name__ == "__main__":
    main()
