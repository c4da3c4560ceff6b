"""tests/settings.py with a custom user model whose pk is a UUID (tests/uuid_users).

AUTH_USER_MODEL must be fixed before the migrations run, so these settings get a test
run of their own: tests/test_uuid_user.py starts it in a subprocess.
"""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.uuid_users"]  # noqa: F405
AUTH_USER_MODEL = "uuid_users.User"
