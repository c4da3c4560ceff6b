"""docs/deploy.md, followed as written: its shell blocks bring up the scaled topology.

The test runs the two blocks under "Bring it up on one machine" with only what must
differ per run replaced: the installed virtualenv instead of a new one, a fresh database
name, and free ports. If the doc's commands stop working, this fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import need, postgres_available, redis_available
from tests.servers import ROOT, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

DOC = ROOT / "docs" / "deploy.md"


def _blocks() -> list[str]:
    section = DOC.read_text().split("## Bring it up on one machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_documented_commands_bring_up_two_servers_and_two_workers(tmp_path: Path) -> None:
    need(postgres_available(), "PostgreSQL is not reachable on 127.0.0.1:5432")
    need(redis_available(), "Redis is not reachable on 127.0.0.1:6379")
    start, check = _blocks()
    assert start.startswith("python3 -m venv .venv"), "the doc should begin with the venv"
    database = f"aa_deploy_{uuid.uuid4().hex[:8]}"
    web_1, web_2 = str(free_port()), str(free_port())
    venv_bin = str(Path(sys.executable).parent) + "/"

    def adapt(block: str) -> str:
        block = block.replace(".venv/bin/", venv_bin).replace("async_actions_demo", database)
        return block.replace("8001", web_1).replace("8002", web_2)

    start_lines = adapt(start).splitlines()[1:]  # the virtualenv is this test's own
    script = "\n".join(
        [
            "set -e",
            f"cd {tmp_path}",
            *start_lines,
            # the doc's reader waits for the servers; the script polls for them
            f"for port in {web_1} {web_2}; do for _ in $(seq 100); do "
            "curl -sf -o /dev/null http://127.0.0.1:$port/ && break; sleep 0.1; done; done",
            adapt(check),
        ]
    )
    for name in ("manage.py", "example_project", "async_actions", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "DEMO_PG_NAME": database,
        "DEMO_REDIS_URL": "redis://127.0.0.1:6379/0",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    shell = subprocess.Popen(
        ["bash", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = shell.communicate(timeout=120)
    finally:
        # The doc's background processes live in the shell's session: stop them all.
        subprocess.run(["pkill", "-TERM", "-s", str(shell.pid)], check=False)
        for _ in range(100):
            alive = subprocess.run(["pgrep", "-s", str(shell.pid)], capture_output=True)
            if alive.returncode != 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["pkill", "-KILL", "-s", str(shell.pid)], check=False)
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
             f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'],
            check=False, capture_output=True,
        )  # fmt: skip
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted((tmp_path / "run").glob("*"))
    )
    assert shell.returncode == 0, output + logs
    final = output.strip().splitlines()[-1]
    assert '"status":"succeeded"' in final, output + logs
    assert '"response":{"seconds":2}' in final, output + logs
