"""Run every benchmark, each in its own process, and write the summary table.

Each benchmark rewrites its own section of docs/performance.md and leaves its headline
figures in a results directory; this script puts those figures in one table at the top
(the ``summary`` section): issue 18's targets first, in the issue's order, then the
other figures. Benchmarks whose services are missing are skipped, and the table says so.
For every missed target the ``profiles`` section shows what the run recorded about
where the time goes (a cProfile table, or py-spy of the server in a pass of its own).

Usage: python bench/run_all.py [--quick] [--only NAME ...] [--rows KEY ...] [--no-profile]
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

from bench._common import DOC, ROOT, machine, spy_summary, write_section


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1):
            return True
    except OSError:
        return False


#: name, script, needs (ports), full arguments, --quick arguments. The full arguments
#: keep `make bench` within about 30 minutes on the 2-core machine (fewer repetitions
#: where the ratio is stable run to run); each script's defaults are larger.
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

#: Issue 18's targets, in the issue's order: the key its benchmark records the row under
#: (``_common.record``), that benchmark, the issue's words for the figure, the target.
ISSUE_ROWS = [
    ("cpu_per_action", "engine", "our own CPU per no-op action (start + claim + finish)", "≤ 2 ms"),
    (
        "tasks_throughput",
        "scaleout",
        "no-op throughput, Tasks runner / the same tasks-db alone, same workers",
        "≥ 0.8×",
    ),
    (
        "celery_throughput",
        "celery_runner",
        "no-op throughput, Celery runner / plain Celery tasks, same workers",
        "≥ 0.7×",
    ),
    ("start_cost", "scaleout", "service.start() cost / the engine's own enqueue", "≤ 1.5×"),
    ("thread_start", "engine", "thread runner, service.start() → handler body, p50", "≤ 1 ms"),
    ("http_start", "engine", "HTTP POST of a start view → handler body, embedded, p50", "≤ 5 ms"),
    (
        "status_rps",
        "vs_celery",
        "status endpoint requests/s / celery-progress's view, same server",
        "≥ 1.5×",
    ),
    (
        "fanout_p99",
        "fanout",
        "fan-out, 1,000 tabs × 100 actions × 10 Hz, one daphne, p99",
        "≤ 100 ms",
    ),
    (
        "fanout_frames",
        "fanout",
        "fan-out frames/s / plain Channels groups, same daphne, 1,000 tabs",
        "≥ 3×",
    ),
]

#: The benchmarks that record a py-spy profile into $BENCH_PROFILE for a row of theirs,
#: and what it samples.
PROFILED = {
    "engine": "daphne serving POST /api/actions/ and the polls, a pass after the measured one",
    "vs_celery": "daphne serving our status JSON, a pass before the measured runs",
    "celery_runner": "the Celery worker and its pool, one more throughput run of ours",
    "fanout": "daphne during our measured side (--nonblocking: daphne is not paused)",
}

COLUMNS = ("figure", "ours", "peer", "ratio", "target", "verdict")


def table(rows: list[dict]) -> list[str]:
    """Rows as a Markdown table (each row as ``_common.record`` describes)."""
    lines = [
        "| figure | ours | peer | ratio | target | met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        cells = (str(row.get(key, "")).replace("|", "\\|") for key in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def collect(results: Path, not_measured: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """The rows the benchmarks recorded in ``results``: issue 18's, one per target in the
    issue's order, then the others in the benchmarks' order.

    ``not_measured`` maps a benchmark to why it has no figures ("skipped: ...",
    "failed: ..."); its issue rows say so in place of a verdict. Every row gets
    ``bench``; an issue row gets the issue's figure and target and its ``number``.
    """
    recorded: dict[str, list[dict]] = {}
    for name, *_ in BENCHES:
        path = results / f"{name}.json"
        if path.exists():
            recorded[name] = [{**row, "bench": name} for row in json.loads(path.read_text())]
    by_key = {row["key"]: row for rows in recorded.values() for row in rows if row.get("key")}
    issue = []
    for number, (key, bench, figure, target) in enumerate(ISSUE_ROWS, 1):
        row = by_key.get(key)
        if row is None:
            reason = not_measured.get(bench) or f"not recorded by bench/{bench} ({key})"
            row = {"bench": bench, "verdict": reason}
        issue.append({**row, "figure": f"{number}. {figure}", "target": target, "number": number})
    keys = {key for key, *_ in ISSUE_ROWS}
    others = [row for rows in recorded.values() for row in rows if row.get("key", "") not in keys]
    return issue, others


def profiles(rows: list[dict], results: Path) -> list[str]:
    """For each row whose target was missed, what the run recorded of where the time
    goes: the row's own profile text, or the py-spy recording of its benchmark."""
    lines: list[str] = []
    shown: dict[str, str] = {}  # profile text -> the row it was shown for
    for row in rows:
        if row.get("verdict") != "MISSED":
            continue
        title = (
            f"### {row['figure']}: missed ({row.get('ours', '')}"
            f"{', ratio ' + row['ratio'] if row.get('ratio') else ''}; target {row['target']})"
        )
        text = row.get("profile", "")
        if text == "py-spy":
            spy = results / f"{row['bench']}.spy"
            text = (
                f"py-spy, bench/bench_{row['bench']}.py: {PROFILED.get(row['bench'], '')}\n"
                f"{spy_summary(spy)}"
                if spy.exists() and spy.stat().st_size
                else "(no py-spy recording: run without --no-profile, with py-spy installed)"
            )
        lines += [title, ""]
        if not text:
            lines += ["No profile recorded for this row.", ""]
        elif text in shown:
            lines += [f"The same profile as for {shown[text]} above.", ""]
        else:
            shown[text] = f"row {row.get('number', row['figure'])}"
            lines += ["```", text, "```", ""]
    return lines


def _selected(args: argparse.Namespace) -> set[str]:
    """The benchmarks to run: all, or those named by --only and behind --rows."""
    names = {name for name, *_ in BENCHES}
    wanted = set(args.only or ())
    for key in args.rows or ():
        match = [bench for k, bench, *_ in ISSUE_ROWS if k == key]
        if not match:
            raise SystemExit(f"no row {key!r}; rows: {', '.join(k for k, *_ in ISSUE_ROWS)}")
        wanted.add(match[0])
    unknown = wanted - names
    if unknown:
        raise SystemExit(f"no benchmark {sorted(unknown)}; benchmarks: {', '.join(names)}")
    return wanted or names


def run(args: argparse.Namespace, results: Path) -> tuple[dict[str, str], dict[str, float]]:
    """Run the selected benchmarks; why any has no figures, and how long each took."""
    selected = _selected(args)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # py-spy
    env = {**os.environ, "BENCH_RESULTS": str(results), "PYTHONPATH": str(ROOT), "PATH": path}
    not_measured: dict[str, str] = {}
    took: dict[str, float] = {}
    for name, script, needs, full, quick in BENCHES:
        if name not in selected:
            not_measured[name] = "not run (--only / --rows)"
            continue
        missing = [port for port in needs if not _up(port)]
        if missing:
            not_measured[name] = f"skipped: nothing listens on 127.0.0.1:{missing}"
            print(f"{name}: {not_measured[name]}", file=sys.stderr)
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        extra = quick if args.quick else full
        profile = {}
        if name in PROFILED and not args.no_profile:
            profile["BENCH_PROFILE"] = str(results / f"{name}.spy")
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *extra], env={**env, **profile}
        )
        took[name] = time.monotonic() - began
        if done.returncode != 0:
            not_measured[name] = f"failed: bench/{script} exited with {done.returncode}"
    return not_measured, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--only", nargs="*", help="benchmark names to run")
    parser.add_argument("--rows", nargs="*", help="issue 18 row keys: run their benchmarks")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy passes")
    args = parser.parse_args()
    results = Path(tempfile.mkdtemp(prefix="aa-bench-results-"))
    started = time.monotonic()
    not_measured, took = run(args, results)
    issue, others = collect(results, not_measured)
    minutes = (time.monotonic() - started) / 60
    times = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in took.items())
    partial = bool(args.only or args.rows)
    if partial and DOC.exists() and "<!-- bench:summary -->" in DOC.read_text():
        print("(--only / --rows: the summary table is left as it was)", file=sys.stderr)
    else:
        write_section(
            "summary",
            "\n".join(
                [
                    "## Summary",
                    "",
                    f"`make bench` (`bench/run_all.py{' --quick' if args.quick else ''}`), "
                    f"one run on {machine()}, {time.strftime('%Y-%m-%d')}; took "
                    f"{minutes:.0f} min ({times}). Every ratio is of two figures measured "
                    "in this run. Details and method in each section below. Peer: what the "
                    "row compares with (celery-progress for progress and status, Celery "
                    "for starts, django-tasks-db alone for the Tasks runner, plain "
                    "Channels groups for fan-out); empty for an absolute target.",
                    "",
                    "Issue 18's targets (profiles of those missed: next section):",
                    "",
                    *table(issue),
                    "",
                    "Other figures:",
                    "",
                    *table(others),
                ]
            ),
        )
        missed = profiles(issue, results)
        write_section(
            "profiles",
            "\n".join(
                [
                    "## Where the time goes, for each missed target",
                    "",
                    "Generated by `make bench` from the run above: a cProfile table from "
                    "the benchmark's own process, or py-spy sampling the server (daphne, "
                    "or the Celery worker's pool), mostly in a pass apart from the "
                    "measured ones so that the sampling does not slow the figures; each "
                    "block says which. py-spy counts busy threads only.",
                    "",
                    *(missed or ["Every target was met."]),
                ]
            ),
            after="summary",
        )
    print("\n".join(["Issue 18's targets:", *table(issue), "", "Other figures:", *table(others)]))
    print(f"\nTook {minutes:.1f} min: {times}", file=sys.stderr)
    sys.exit(1 if any(v.startswith("failed") for v in not_measured.values()) else 0)


if __name__ == "__main__":
    main()
