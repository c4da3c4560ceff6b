"""A site whose user model has a UUID pk (review finding: hand-written SQL bound the raw
pk, which SQLite stores as 32 hex digits, so a logged-in start answered DB_FAILED under
the default MAX_ACTIVE_PER_OWNER and the running cap's release found nobody waiting).

AUTH_USER_MODEL is fixed before the migrations run, so the checks
(tests/uuid_users/uuid_user_checks.py) run in a pytest of their own with
tests/settings_uuid_user.py, on the database AA_TEST_DB selects (pytest-django creates
and drops a test database named after that process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from async_actions import fairness
from async_actions.models import Action

ROOT = Path(__file__).resolve().parent.parent
CHECKS = "tests/uuid_users/uuid_user_checks.py"


def test_a_uuid_pk_user_is_limited_capped_released_and_starts_through_the_view() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--ds=tests.settings_uuid_user", CHECKS],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert " failed" not in done.stdout and " passed" in done.stdout, done.stdout


@pytest.mark.django_db
def test_the_python_and_sql_lock_keys_of_an_integer_pk_user_agree() -> None:
    """PostgreSQL: a start's lock key (``Owner.lock_sql``) is the one a claim reads from
    the row (``_LOCK_KEY_SQL``), or two claims of one owner would not serialize
    (the UUID pk's case is in the checks above)."""
    if connection.vendor != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    user = get_user_model().objects.create_user("ian", password="pw")
    action = Action.objects.create(handler="tests.echo", user=user)
    table = connection.ops.quote_name(Action._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {fairness._LOCK_KEY_SQL}, a.user_id FROM {table} a WHERE a.id = %s",
            [action.pk],
        )
        in_sql, column = cursor.fetchone()
    for value in (user.pk, column, str(user.pk)):
        owner = fairness.owner_of(value)
        assert owner is not None
        assert owner.lock_sql()[1][1] == in_sql == f"user:{user.pk}"
