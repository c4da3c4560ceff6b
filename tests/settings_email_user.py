"""The test settings with a user model named by e-mail, without ``username``
(tests/test_email_user.py, in a process of its own: the user model is fixed at startup)."""

import os
import tempfile

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.email_user"]  # noqa: F405
AUTH_USER_MODEL = "email_user.EmailUser"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "AA_EMAIL_USER_DB", os.path.join(tempfile.gettempdir(), "aa_email_user.sqlite3")
        ),
    }
}
