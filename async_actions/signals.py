"""Lifecycle signals; receivers get ``action`` (the row as stored)."""

from django.dispatch import Signal

#: Sent in the worker when an action is claimed and its handler is about to run.
action_started = Signal()
#: Sent when an action reaches a terminal state; ``status`` is the final status.
action_finished = Signal()
