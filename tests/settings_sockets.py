"""Test settings with a low WebSocket cap, for a daphne the socket tests start."""

from tests.settings import *  # noqa: F403

ASYNC_ACTIONS = {**ASYNC_ACTIONS, "MAX_SOCKETS_PER_OWNER_ACTION": 3}  # noqa: F405
CSRF_TRUSTED_ORIGINS = ["http://*.trusted.test:8443"]
