"""The peer settings with a thread pool big enough to run 100 actions at once."""

from bench.settings_peer import *  # noqa: F403

ASYNC_ACTIONS = {**ASYNC_ACTIONS, "MAX_WORKERS": 110}  # noqa: F405
