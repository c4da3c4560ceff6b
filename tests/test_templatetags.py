"""The ``async_actions`` template tag library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from async_actions import paths, routing

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys, django
django.setup()
import async_actions.templatetags.async_actions
stack = [m for m in ("async_actions.consumers", "async_actions.routing",
                     "channels.generic.websocket", "channels.consumer") if m in sys.modules]
print(",".join(stack))
"""


def test_importing_the_tag_library_does_not_import_the_websocket_stack() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_the_progress_element_path_is_the_one_routing_mounts() -> None:
    pk = "0c4b1f52-0d0e-4b8e-9a57-8a2b7c1e2f3a"
    assert paths.websocket_path(pk) == f"/ws/async-actions/{pk}/"
    assert routing.WEBSOCKET_PATH == paths.WEBSOCKET_PATH  # the old import path
    route = routing.websocket_urlpatterns[0].pattern
    assert str(route) == paths.WEBSOCKET_ROUTE
    assert route.match(paths.websocket_path(pk).lstrip("/")) is not None
