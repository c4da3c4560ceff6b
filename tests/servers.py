"""Real server processes for tests: daphne serving a settings module on loopback.

Tests that need the whole stack (browser, fuzzing, several processes) start one here
instead of each writing its own subprocess plumbing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    """Return once ``url`` answers (any status); fail if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server did not answer on {url} within {timeout}s")


def sqlite_env(tmp: Path, settings: str = "example_project.settings", **extra: str) -> dict:
    """Environment for a process using ``settings`` on a private SQLite file in ``tmp``."""
    db = str(tmp / "db.sqlite3")
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings,
        "DEMO_SQLITE_PATH": db,  # example_project.settings
        "AA_SQLITE_PATH": db,  # tests.settings
        "DEMO_MEDIA_ROOT": str(tmp / "media"),  # uploads and result files
        "AA_TEST_DB": "sqlite",
        "PYTHONPATH": str(ROOT),
        "DJANGO_DEBUG": "1",
        **extra,
    }


def manage(env: dict, *args: str, timeout: float = 120) -> str:
    """Run ``manage.py`` with ``env``; return its output, fail with it on error."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


@dataclass
class Server:
    base: str
    process: subprocess.Popen
    log_path: Path
    env: dict = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


#: The demo project's ASGI application, what ``daphne`` serves unless told otherwise.
DEMO_APP = "example_project.asgi:application"


def start_daphne(env: dict, log_path: Path, app: str = DEMO_APP, timeout: float = 30) -> Server:
    """A daphne process serving ``app`` with ``env`` on a free loopback port, returned
    once it answers HTTP; the caller stops it (:func:`stop`). For callers that cannot
    hold a ``with`` block around the server's life (benchmarks); tests use :func:`daphne`.
    """
    port = free_port()
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, env)
    try:
        wait_http(f"{server.base}/", process, timeout)
    except BaseException:
        stop(process)
        raise
    return server


@contextmanager
def daphne(
    env: dict, log_path: Path, *, migrate: bool = True, app: str = DEMO_APP
) -> Iterator[Server]:
    """A daphne process with ``env`` on a free loopback port, stopped (SIGTERM) after."""
    if migrate:
        manage(env, "migrate", "--noinput", "-v0")
    server = start_daphne(env, log_path, app)
    try:
        yield server
    finally:
        stop(server.process)


def stop(process: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# -- PostgreSQL databases and API clients of the multi-process tests ------------------------


def pg(sql: str, *params: object, dbname: str = "postgres") -> list[tuple]:
    """One statement on the local PostgreSQL, autocommit: its rows (empty for DDL)."""
    import psycopg  # only the PostgreSQL tests get here; the wheel's session may lack it

    host = os.environ.get("AA_PG_HOST", "127.0.0.1")
    user = os.environ.get("AA_PG_USER", "postgres")
    with psycopg.connect(host=host, user=user, dbname=dbname, autocommit=True) as conn:
        cursor = conn.execute(sql, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one module's processes; dropped after, even
    with connections still open (a killed worker's)."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    pg(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: A ``manage.py shell -c`` script: user "ops" with an API token and a logged-in session;
#: it prints the token and the session key.
OPS_USER = """
from tests.accounts import user_with_credentials
print(*user_with_credentials('ops', 'pw'))
"""


class ApiUser:
    """The REST API as the "ops" user of ``OPS_USER`` sees it, on any server of a site."""

    def __init__(self, env: dict, tmp: Path, token: str, session: str) -> None:
        self.env, self.tmp, self.token, self.session = env, tmp, token, session

    def call(self, base: str, method: str, path: str, body: object = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{base}/api/actions/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def start_at(self, base: str, handler: str, **request: object) -> str:
        status, body = self.call(base, "POST", "", {"handler": handler, "request": request})
        assert status == 201, body
        return body["id"]

    def get_at(self, base: str, pk: str) -> dict:
        status, body = self.call(base, "GET", f"{pk}/")
        assert status == 200, body
        return body

    def wait_at(self, base: str, pk: str, predicate: Any, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            action = self.get_at(base, pk)
            if predicate(action):
                return action
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pk} did not get there in {timeout}s: {action}\n{self.diagnosis()}"
                )
            time.sleep(0.05)

    def diagnosis(self) -> str:
        """What a failed wait adds to its message (a worker's log, say)."""
        return ""

    def runs(self) -> list[tuple[str, int, int]]:
        """(action id, attempt, pid) of every run the handlers logged to ``AA_RUN_LOG``."""
        path = Path(self.env["AA_RUN_LOG"])
        if not path.exists():
            return []
        return [
            (pk, int(attempt), int(pid))
            for pk, attempt, pid in (line.split() for line in path.read_text().splitlines())
        ]
