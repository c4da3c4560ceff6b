"""A handler that ends its process (``os._exit()``, a crash in C code) in the embedded
shape: the ThreadRunner runs handlers inside the web server, so the server ends with it.

The scaled shape isolates handlers in ``db_worker`` processes:
``tests/test_scaleout.py::test_os_exit_in_a_handler_ends_only_its_worker_and_the_action_fails``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.servers import daphne, manage, sqlite_env

pytestmark = pytest.mark.slow

TOKEN = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
print(Token.objects.create(user=get_user_model().objects.create_user('ops')).key)
"""


def api(base: str, token: str, method: str, path: str = "", body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{base}/api/actions/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_os_exit_in_a_handler_ends_the_embedded_server_process(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path, "tests.settings")
    with daphne(env, tmp_path / "daphne.log") as server:
        token = manage(env, "shell", "-c", TOKEN).split()[-1]
        trigger = tmp_path / "crash-now"
        body = {"handler": "tests.crash", "request": {"trigger": str(trigger), "code": 70}}
        pk = api(server.base, token, "POST", body=body)["id"]
        wait_for(lambda: api(server.base, token, "GET", f"{pk}/")["status"] == "running")
        trigger.touch()
        assert server.process.wait(timeout=30) == 70  # the web server is gone with it
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{server.base}/", timeout=2)
    # Left running, with a heartbeat that no longer moves, until a sweep finds it.
    status = manage(
        env,
        "shell",
        "-c",
        f"from async_actions.models import Action; print(Action.objects.get(pk='{pk}').status)",
    )
    assert status.split()[-1] == "running"
