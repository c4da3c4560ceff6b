"""Handler faults whose text cannot be taken or stored: the action still ends.

Before this, an ``ActionError`` whose ``str()`` raised (its own ``__str__``, or an
argument whose ``__str__`` raises) or whose message held a NUL or a lone surrogate
escaped the executor before the final write: the action stayed ``running`` with its
heartbeat still written, so the sweep never failed it. ``ctx.log.info(obj)`` with an
unprintable ``obj`` and ``ctx.set_progress(10, obj)`` failed the action with "unexpected
error" where standard logging would carry on. Fails on 1983d58.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from async_actions import service
from async_actions.context import ActionError
from async_actions.handlers import handler
from async_actions.models import Action
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    __repr__ = __str__


class UnprintableError(ActionError):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class NotTextError(ActionError):
    def __str__(self) -> Any:
        return Unprintable()


def _raise(exc: BaseException) -> Any:
    raise exc


FAILING = {
    "error_arg_unprintable": lambda ctx: _raise(ActionError(Unprintable())),
    "error_str_raises": lambda ctx: _raise(UnprintableError("x")),
    "error_str_not_text": lambda ctx: _raise(NotTextError("x")),
    "error_nul_surrogate": lambda ctx: _raise(ActionError("a\x00b\ud800c")),
    "error_huge": lambda ctx: _raise(ActionError("y" * 5_000_000)),
    "plain_nul_surrogate": lambda ctx: _raise(ValueError("a\x00b\ud800c")),
    "plain_unprintable": lambda ctx: _raise(ValueError(Unprintable())),
    "base_unprintable": lambda ctx: _raise(KeyboardInterrupt(Unprintable())),
}
SUCCEEDING = {
    "log_unprintable_msg": lambda ctx: ctx.log.info(Unprintable()),
    "log_unprintable_arg": lambda ctx: ctx.log.info("%s", Unprintable()),
    "log_bad_format": lambda ctx: ctx.log.info("%d %d", 1),
    "log_nul_surrogate": lambda ctx: ctx.log.info("a\x00b\ud800c"),
    "progress_unprintable_message": lambda ctx: ctx.set_progress(10, Unprintable()),
}
for _name, _fn in {**FAILING, **SUCCEEDING}.items():
    handler(f"tests.unprintable.{_name}")(lambda ctx, fn=_fn: fn(ctx) or "done")


def _finished(pk: Any) -> Action:
    return wait_for(
        lambda: Action.objects.filter(pk=pk).exclude(status__in=["pending", "running"]).first(),
        timeout=10,
    )


@pytest.mark.parametrize("name", list(FAILING))
def test_an_exception_whose_text_cannot_be_stored_still_fails_the_action(
    name: str, runner: Any
) -> None:
    started = service.start(f"tests.unprintable.{name}", {})
    action = _finished(started.action.pk)
    assert action.status == "failed"
    assert action.error and len(action.error) <= 10_000
    assert "\x00" not in action.error + action.traceback
    # the pool goes on: a next action runs
    assert _finished(service.start("tests.echo", {}).action.pk).status == "succeeded"


@pytest.mark.parametrize("name", list(SUCCEEDING))
def test_an_unprintable_log_or_progress_message_does_not_fail_the_action(
    name: str, runner: Any, caplog: Any
) -> None:
    # pytest's log capture re-raises formatting errors; a server's logging does not
    logging.getLogger("async_actions.actions").propagate = False
    try:
        action = _finished(service.start(f"tests.unprintable.{name}", {}).action.pk)
    finally:
        logging.getLogger("async_actions.actions").propagate = True
    assert action.status == "succeeded", action.error
