"""What every benchmark shares: percentiles, the machine line, and rewriting its own
section of docs/performance.md between ``<!-- bench:NAME -->`` markers, so each
benchmark can run alone and leave the other sections as they were."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Servers are started as the tests start them: one copy of that code (tests/servers.py).
from tests.servers import ROOT
from tests.servers import free_port as free_port
from tests.servers import start_daphne as start_daphne
from tests.servers import stop as stop

#: The statuses an action ends in (Action.TERMINAL_STATUSES, without importing Django).
FINAL = ("succeeded", "failed", "cancelled")
DOC = ROOT / "docs" / "performance.md"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; enough for the few thousand samples a bench takes."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    """The machine line; with the load average, since a shared machine skews timings."""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}{load}"
    )


def write_section(name: str, body: str, after: str = "") -> str:
    """Replace (or add) the section ``name`` of docs/performance.md; returns it.

    A new section goes right after the section ``after`` if given and present, else at
    the end (the summary: at the top).
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = f"{start}\n{body.strip()}\n{end}"
    current = DOC.read_text() if DOC.exists() else "# Performance\n"
    anchor = f"<!-- /bench:{after} -->\n"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    elif name == "summary" and current.startswith("# Performance\n"):
        current = "# Performance\n\n" + text + "\n" + current[len("# Performance\n") :]
    elif after and anchor in current:
        before, rest = current.split(anchor, 1)
        current = before + anchor + "\n" + text + "\n" + rest
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(current)
    return text


def verdict(met: bool) -> str:
    """The summary table's word for a target: "met" or "MISSED"."""
    return "met" if met else "MISSED"


def collecting_runner() -> Any:
    """A runner that only keeps what is dispatched, so a benchmark runs each action
    itself, in its own thread (``executor.execute``), and profiles exactly that."""
    from async_actions.runners.base import BaseRunner

    class Collecting(BaseRunner):
        runs_in_process = True

        def __init__(self) -> None:
            super().__init__()
            self.ids: list[Any] = []

        def dispatch(self, action_id: Any) -> None:
            self.ids.append(action_id)

    return Collecting()


def top_entries(profile: Any, count: int = 25) -> str:
    """The top ``count`` entries of a cProfile run by cumulative time, as pstats prints
    them (the table only), for a docs/performance.md section."""
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(profile, stream=out).strip_dirs().sort_stats("cumulative").print_stats(count)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    return "\n".join(line.rstrip() for line in lines[start:] if line.strip())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process ``pid`` has used so far (Linux /proc).

    On a shared machine wall-clock rates swing with the neighbours' load; the server's
    own CPU per request or per frame does not, so the benches report both.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def py_spy() -> str:
    """The py-spy executable: on PATH, or beside this Python (a venv not activated)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


@contextmanager
def spied(pid: int, *, subprocesses: bool = False, rate: int = 100) -> Iterator[None]:
    """py-spy records process ``pid`` (and its children) while the block runs, into the
    file ``$BENCH_PROFILE`` names, as raw collapsed stacks (:func:`spy_summary` reads
    them); without ``BENCH_PROFILE`` it does nothing. ``--nonblocking``: py-spy's default
    pauses the process for every sample, which slowed a daphne with 100 handler threads
    some 250-fold (bench_fanout: 4,200 frames/s without, 16 with). The benchmarks still
    run their profiled pass apart from the passes they measure.
    """
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        yield
        return
    command = [py_spy(), "record", "-p", str(pid), "-o", out, "--format", "raw", "--nonblocking"]
    command += ["-r", str(rate)]
    spy = subprocess.Popen(
        [*command, *(["--subprocesses"] if subprocesses else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # attached before the block's work starts
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


#: The first component of a py-spy frame's file, as it prints it, to the part of the
#: stack it belongs to; anything else is the standard library or another package.
_PARTS = {
    "async_actions": "async_actions (ours)",
    "django": "Django",
    "rest_framework": "Django REST framework",
    "channels": "Channels",
    "daphne": "daphne / Twisted / autobahn",
    "twisted": "daphne / Twisted / autobahn",
    "autobahn": "daphne / Twisted / autobahn",
    "asgiref": "asgiref (sync/async hops)",
    "asyncio": "asyncio",
    "psycopg": "psycopg",
    "sqlite3": "sqlite3",
    "redis": "redis-py",
    "channels_redis": "channels_redis",
    "kombu": "Celery / kombu / billiard",
    "celery": "Celery / kombu / billiard",
    "billiard": "Celery / kombu / billiard",
    "django_tasks": "django-tasks",
    "django_tasks_db": "django-tasks",
    "bench": "the benchmark's own code",
    "example_project": "the demo project",
}


#: Innermost frames that are a thread waiting, not working, though py-spy counts them.
_WAITS = ("select", "poll", "wait", "_wait_for_tstate_lock", "sleep")


def _frame(frame: str) -> tuple[str, str]:
    """(``function (file)`` without the line, the part of the stack) of a py-spy frame."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    head = path.split("/", 1)[0].removesuffix(".py")
    return f"{name} ({path})", _PARTS.get(head, "standard library / other")


def spy_summary(path: Path, count: int = 12) -> str:
    """What a py-spy raw recording says, as text for docs/performance.md: the share of
    samples by part of the stack (where the innermost frame was), the functions with
    the most samples where they were innermost (self), and our functions with the most
    samples anywhere on the stack (total: the time of what they call included)."""
    self_by_fn: Counter[str] = Counter()
    ours_total: Counter[str] = Counter()
    by_part: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")]
        n = int(number)
        samples += n
        if not frames:
            by_part["no Python frame (native code)"] += n
            continue
        leaf, part = frames[-1]
        if leaf.split(" (", 1)[0].rsplit(".", 1)[-1] in _WAITS:
            part = "waiting (select, Condition.wait, sleep)"
        else:
            self_by_fn[leaf] += n
        by_part[part] += n
        for name in {name for name, part in frames if part == _PARTS["async_actions"]}:
            ours_total[name] += n
    if not samples:
        return "(py-spy recorded no samples)"

    def share(n: int) -> str:
        return f"{100 * n / samples:5.1f}%"

    lines = [f"{samples} samples of threads py-spy saw as active", ""]
    lines += ["by part of the stack (innermost frame):"]
    lines += [f"  {share(n)}  {part}" for part, n in by_part.most_common(10)]
    lines += ["", "functions, self (innermost frame; waits left out):"]
    lines += [f"  {share(n)}  {name}" for name, n in self_by_fn.most_common(count)]
    lines += ["", "our functions, total (anywhere on the stack):"]
    lines += [f"  {share(n)}  {name}" for name, n in ours_total.most_common(count)]
    return "\n".join(lines)


def record(name: str, rows: list[dict]) -> None:
    """Leave this benchmark's headline figures for bench/run_all.py's summary table.

    Writes ``<BENCH_RESULTS>/<name>.json``: a list of rows, each a dict of strings,
    already formatted: ``figure``, ``ours``, ``peer`` (what we compare with, "" for an
    absolute target), ``ratio``, ``target``, and ``verdict`` (:func:`verdict`; "" where
    no target applies). Missing keys print empty. A row that is one of issue 18's
    targets also has ``key`` (run_all's ``ISSUE_ROWS`` orders and names them), and may
    have ``profile``: text saying where the time goes (a cProfile table), shown in
    docs/performance.md when the target is missed; or "py-spy", meaning the recording
    this run made into ``$BENCH_PROFILE``. Any benchmark, run by run_all, adds its rows
    this way; run_all prints them and writes the summary section.
    """
    directory = os.environ.get("BENCH_RESULTS")
    if directory:
        Path(directory, f"{name}.json").write_text(json.dumps(rows, indent=1))


async def http_get_loop(port: int, path: str, headers: dict, duration: float, conns: int) -> int:
    """Requests completed by ``conns`` keep-alive connections in ``duration`` seconds.

    A deliberately small HTTP/1.1 client: the load generator must cost the same for
    both sides it compares, and must not be the bottleneck's noise source.
    """
    import asyncio

    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    deadline = time.monotonic() + duration
    done = 0

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                if status not in (b"200", b"304"):
                    raise SystemExit(f"{path} answered {status.decode()}")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return done


def django_with_user(env: dict) -> tuple[str, str]:
    """Set up Django in this process as ``env`` says, migrate, and make a user.

    Returns the user's API token and a logged-in session key, for the benchmark's
    HTTP and WebSocket clients.
    """
    for key in ("DJANGO_SETTINGS_MODULE", "DEMO_SQLITE_PATH", "DJANGO_DEBUG", "BENCH_MAX_WORKERS"):
        if key in env:
            os.environ[key] = env[key]
    import django

    django.setup()
    from django.core.management import call_command

    from tests.accounts import user_with_credentials

    call_command("migrate", verbosity=0)
    return user_with_credentials("bench", "bench")
