"""Importing the public modules loads neither DRF nor the Tasks framework.

A site that uses only the views (or only handlers and the service) must not need
``rest_framework`` or ``django_tasks`` / ``django.tasks`` installed or imported: they
load where they are used (``async_actions.api``, ``async_actions.runners.tasks``).
Run in a fresh interpreter with a minimal settings module, since the test settings
install both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MINIMAL_SETTINGS = """
SECRET_KEY = "import-weight"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "async_actions",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
"""

PROBE = """
import json, sys
import django
django.setup()
heavy = ("rest_framework", "drf_spectacular", "django_tasks", "django.tasks")
loaded = {}
for name in sys.argv[1:]:
    __import__(name)
    loaded[name] = sorted(
        m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy)
    )
print(json.dumps(loaded))
"""


@pytest.mark.parametrize(
    "module", ["async_actions.views", "async_actions.handlers", "async_actions.service"]
)
def test_public_module_imports_neither_drf_nor_tasks(tmp_path: Path, module: str) -> None:
    (tmp_path / "minimal_settings.py").write_text(MINIMAL_SETTINGS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "minimal_settings",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(out) == {module: []}
