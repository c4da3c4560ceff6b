"""What every benchmark shares: percentiles, the machine line, and rewriting its own
section of docs/performance.md between ``<!-- bench:NAME -->`` markers, so each
benchmark can run alone and leave the other sections as they were."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
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


def write_section(name: str, body: str) -> str:
    """Replace (or append) the section ``name`` of docs/performance.md; returns it."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = f"{start}\n{body.strip()}\n{end}"
    current = DOC.read_text() if DOC.exists() else "# Performance\n"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    elif name == "summary" and current.startswith("# Performance\n"):
        current = "# Performance\n\n" + text + "\n" + current[len("# Performance\n") :]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(current)
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout}s")


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def record(name: str, rows: list[dict]) -> None:
    """Leave this benchmark's headline figures for bench/run_all.py's summary table.

    Writes ``<BENCH_RESULTS>/<name>.json``: a list of rows, each a dict of strings,
    already formatted: ``figure``, ``ours``, ``peer`` (what we compare with, "" for an
    absolute target), ``ratio``, ``target``, and ``verdict`` (:func:`verdict`; "" where
    no target applies). Missing keys print empty. Any benchmark, run by run_all, adds
    its rows this way; run_all prints them and writes the summary section.
    """
    import json

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
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench", password="bench")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return Token.objects.create(user=user).key, session.session_key
