"""Run every benchmark, each in its own process, and write the summary table.

Each benchmark rewrites its own section of docs/performance.md and leaves its headline
figures in a results directory; this script puts those figures in one table at the top
(the ``summary`` section). Benchmarks whose services are missing are skipped, and the
table says so.

Usage: python bench/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import DOC, ROOT, machine, write_section


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


#: name, script, needs (ports), full arguments, --quick arguments
BENCHES = [
    ("engine", "bench_engine.py", (), [], ["--actions", "150", "--starts", "40"]),
    ("progress", "bench_progress.py", (6379,), [], ["--repeat", "3"]),
    ("latency", "bench_latency.py", (), [], ["--updates", "500"]),
    ("vs_celery", "bench_vs_celery.py", (6379,), [], ["--repeat", "1", "--seconds", "4"]),
    ("scaleout", "bench_scaleout.py", (5432, 6379), [], ["--actions", "100", "--repeat", "1"]),
    (
        "celery_runner",
        "bench_celery_runner.py",
        (5432, 6379),
        [],
        ["--actions", "100", "--repeat", "1", "--starts", "15"],
    ),
    ("fanout", "bench_fanout.py", (), [], ["--clients", "200", "--actions", "20"]),
    ("load", "bench_load.py", (), [], ["--actions", "40", "--clients", "100"]),
    ("pickup", "bench_pickup.py", (), [], ["--starts", "10"]),
]


COLUMNS = ("figure", "ours", "peer", "ratio", "target", "verdict")


def table(rows: list[dict]) -> list[str]:
    """The summary rows as a Markdown table (each row as ``_common.record`` describes)."""
    lines = [
        "| figure | ours | peer | ratio | target | met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key in COLUMNS) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--only", nargs="*", help="benchmark names to run")
    args = parser.parse_args()
    results = Path(tempfile.mkdtemp(prefix="aa-bench-results-"))
    env = {**os.environ, "BENCH_RESULTS": str(results), "PYTHONPATH": str(ROOT)}
    notes = []
    started = time.monotonic()
    for name, script, needs, full, quick in BENCHES:
        if args.only and name not in args.only:
            continue
        missing = [port for port in needs if not _up(port)]
        if missing:
            notes.append(f"{name}: skipped, nothing listens on 127.0.0.1:{missing}")
            print(notes[-1], file=sys.stderr)
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        extra = quick if args.quick else full
        done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *extra], env=env)
        if done.returncode != 0:
            notes.append(f"{name}: failed with exit code {done.returncode}")
    rows = []
    for name, *_ in BENCHES:
        path = results / f"{name}.json"
        if path.exists():
            rows += [{**row, "bench": name} for row in json.loads(path.read_text())]
    if args.only and DOC.exists() and "<!-- bench:summary -->" in DOC.read_text():
        print("(--only: the summary table is left as it was)", file=sys.stderr)
    else:
        lines = [
            "## Summary",
            "",
            f"`make bench` (`bench/run_all.py{' --quick' if args.quick else ''}`), one run on "
            f"{machine()}, {time.strftime('%Y-%m-%d')}; took "
            f"{(time.monotonic() - started) / 60:.0f} min. Ratios come from the same run. "
            "Details and method in each section below. Peer: what the row compares with "
            "(celery-progress for progress and status, Celery for starts, django-tasks-db "
            "alone for the Tasks runner); empty for an absolute target.",
            "",
            *table(rows),
        ]
        if notes:
            lines += ["", *(f"- {note}" for note in notes)]
        write_section("summary", "\n".join(lines))
    print("\n".join(table(rows)))
    if notes:
        print("\n".join(notes), file=sys.stderr)
    sys.exit(1 if any("failed" in note for note in notes) else 0)


if __name__ == "__main__":
    main()
