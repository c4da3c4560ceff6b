"""A site whose user model is named by e-mail and has no ``username`` field: the admin's
list searches and sorts by owner, the API and the pages name the owner. The user model
is fixed at startup, so this runs in a process of its own on tests/settings_email_user.py
(a SQLite file of its own; the engine under test does not depend on the database)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import django
django.setup()
from django.core.management import call_command
from django.test import Client
from django.test.utils import setup_test_environment
call_command("migrate", verbosity=0)
setup_test_environment()
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient
from async_actions import service
from async_actions.admin import ActionAdmin
user = get_user_model().objects.create_superuser("ada@example.com", "pw")
action = service.start("tests.echo", user=user).action
client = Client()
client.force_login(user)
owner_column = ActionAdmin.list_display.index("owner")
for query in ({"q": "ada@"}, {"o": str(owner_column)}):
    page = client.get("/admin/async_actions/action/", query)
    assert page.status_code == 200, (query, page.status_code)
    assert "ada@example.com" in page.content.decode(), query
api = APIClient()
api.force_authenticate(user)
assert api.get(f"/api/actions/{action.pk}/").json()["owner"] == "ada@example.com"
print("ok")
"""


def test_the_admin_and_the_api_work_with_an_email_user_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings_email_user",
            "AA_EMAIL_USER_DB": str(tmp_path / "db.sqlite3"),
            "MEDIA_ROOT": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "ok"
