"""The peer of the scaled-out benchmark: a plain Django task that does nothing, enqueued
and run by the same django-tasks-db workers as our actions (bench/bench_scaleout.py)."""

from __future__ import annotations

from async_actions.tasks_compat import task


@task()  # type: ignore[untyped-decorator]  # the backport ships no type information
def noop() -> None:
    """Does nothing: what the engine itself costs per job."""
