"""The peer settings with a thread pool big enough to run 100 actions at once."""

from bench.settings_peer import *  # noqa: F403

ASYNC_ACTIONS = {
    **ASYNC_ACTIONS,  # noqa: F405
    "MAX_WORKERS": 110,
    # One benchmark user runs every action at once, on purpose.
    "MAX_ACTIVE_PER_OWNER": None,
    "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS": None,
    "MAX_RUNNING_PER_OWNER": None,
    # ... and watches every action from 1,000 sockets (the defaults refuse past 100).
    "MAX_SOCKETS_PER_OWNER": None,
    "MAX_SOCKETS_PER_OWNER_ACTION": None,
}
