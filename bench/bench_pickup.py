"""How soon the server runs an action that a script (no ``startup()``) inserted.

The embedded shape: daphne (which calls ``async_actions.startup()``) serves; a separate
Python process, as a cron script would, starts ``bench.stamp`` actions one at a time and
waits for each. The figure is from just before ``service.start`` in the script to the
first line of the handler's body in the server: the insert, the commit, the
announcement (NOTIFY on PostgreSQL) or the server's next poll (SQLite,
``PICKUP_POLL_INTERVAL``), the claim and the thread hand-off.

Usage: python bench/bench_pickup.py [--starts 30] [--no-write]
Writes its section of docs/performance.md between the bench:pickup markers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

try:  # PostgreSQL is measured when it is there
    import psycopg
except ImportError:
    psycopg = None

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, machine, percentile, record, write_section
from tests.servers import daphne

#: The script: N sequential starts, each waited for; prints the latencies as JSON.
SCRIPT = """
import json, sys, time
import django
django.setup()
from async_actions import service
from async_actions.models import Action
out = []
for _ in range({starts}):
    began = time.time()
    pk = service.start("bench.stamp").action.pk
    while True:
        row = Action.objects.filter(pk=pk, status="succeeded").values("response").first()
        if row:
            out.append(row["response"]["t"] - began)
            break
        time.sleep(0.002)
print("LAT " + json.dumps(out))
"""


def _pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), 1):
            return True
    except OSError:
        return False


def measure(env: dict[str, str], starts: int, log: Path) -> list[float]:
    with daphne(env, log):  # migrates first
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT.format(starts=starts)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    line = [x for x in done.stdout.splitlines() if x.startswith("LAT ")]
    if not line:
        raise SystemExit(done.stdout + done.stderr)
    return [value * 1000 for value in json.loads(line[-1][4:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aa-bench-pickup-"))
    base = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings_pickup",
        "PYTHONPATH": str(ROOT),
    }
    shapes = [
        ("SQLite, poll every 1 s (default)", {"DEMO_SQLITE_PATH": str(tmp / "a.sqlite3")}),
        (
            "SQLite, poll every 0.2 s",
            {"DEMO_SQLITE_PATH": str(tmp / "b.sqlite3"), "BENCH_PICKUP_POLL": "0.2"},
        ),
    ]
    pg_name = f"aa_bench_pickup_{uuid.uuid4().hex[:8]}"
    created = psycopg is not None and _pg_up()
    if created:
        with psycopg.connect(host="127.0.0.1", user="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {pg_name}")
        shapes.append(("PostgreSQL, LISTEN/NOTIFY", {"BENCH_PG_NAME": pg_name}))
    rows = []
    try:
        for i, (label, extra) in enumerate(shapes):
            values = measure({**base, **extra}, args.starts, tmp / f"daphne-{i}.log")
            rows.append((label, values))
            print(
                f"{label}: p50 {percentile(values, 50):.1f} ms, "
                f"p95 {percentile(values, 95):.1f} ms, max {max(values):.1f} ms"
            )
    finally:
        if created:
            with psycopg.connect(host="127.0.0.1", user="postgres", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)")
    table = "\n".join(
        f"| {label} | {percentile(v, 50):.1f} | {percentile(v, 95):.1f} | {max(v):.1f} |"
        for label, v in rows
    )
    body = f"""## Actions started outside the server: pick-up latency

`python bench/bench_pickup.py --starts {args.starts}`: a script process (no
`startup()`) starts `bench.stamp` one at a time; daphne (the embedded server) runs
each. Milliseconds from the script's `service.start` call to the handler's first line
in the server. {machine()}. Each start follows the previous action's end, which
follows a poll, so the SQLite rows wait close to the whole interval (a random start
waits half of it on average). The machine is shared with other jobs: figures vary
between runs (PostgreSQL from about 45 to 100 ms p50 here).

| shape | p50 ms | p95 ms | max ms |
| --- | --- | --- | --- |
{table}
"""
    if not args.no_write:
        write_section("pickup", body)
    record(
        "pickup",
        [
            {
                "figure": f"pick-up p50, {label}",
                "ours": f"{percentile(v, 50):.0f} ms",
                "peer": "",
                "ratio": "",
                "target": "",
                "verdict": "",
            }
            for label, v in rows
        ],
    )


if __name__ == "__main__":
    main()
