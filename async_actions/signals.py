"""Lifecycle signals; receivers get ``action`` (the row as stored)."""

from django.dispatch import Signal

#: Sent in the worker when an action is claimed and its handler is about to run.
action_started = Signal()
#: Sent when an action reaches a terminal state; ``status`` is the final status.
action_finished = Signal()
#: Sent when an attempt failed with a ``retry_on`` exception and the action went back to
#: pending; also gets ``exception`` and ``run_after`` (when the next attempt may start).
action_retrying = Signal()
