"""A user with credentials for clients outside Django's test client.

A server in another process (daphne, a Celery worker) is reached by curl-like HTTP
clients and WebSocket clients, which need an API token and a logged-in session cookie.
Imported once Django is set up (its models load here): by ``tests.servers.OPS_USER``,
run in ``manage.py shell``, and by the benchmarks.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.authtoken.models import Token


def user_with_credentials(username: str, password: str) -> tuple[str, str]:
    """Create the user; return its API token and the key of a logged-in session.

    The session comes from Django's own ``force_login``, so it carries what the
    authentication middleware checks (backend, session hash) as a real login would.
    """
    user = get_user_model().objects.create_user(username, password=password)
    client = Client()
    client.force_login(user)
    return Token.objects.create(user=user).key, client.cookies[settings.SESSION_COOKIE_NAME].value
