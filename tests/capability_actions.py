"""Handlers for the capability tests: async, concurrency keys, time limits, retries."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from asgiref.sync import sync_to_async

from async_actions.context import ActionContext, ActionError, current
from async_actions.handlers import ActionHandler, handler
from tests.actions import gate

#: Handlers append facts here for tests to assert on (reset by the tests).
events: list[Any] = []
events_lock = threading.Lock()


def record(*fact: Any) -> None:
    with events_lock:
        events.append(fact)


# -- async ---------------------------------------------------------------------------


@handler("caps.async_steps")
async def async_steps(ctx: ActionContext) -> Any:
    steps = int(ctx.request.get("steps", 4))
    for i in range(steps):
        await asyncio.sleep(0)
        ctx.set_progress(100 * (i + 1) / steps, f"step {i + 1}")
    record("async_thread", threading.get_ident(), current() is ctx)
    return {"steps": steps}


@handler("caps.async_wait")
async def async_wait(ctx: ActionContext) -> Any:
    """Awaits until its gate opens; records the CancelledError it gets on cancel."""
    ctx.set_progress(5, "waiting")
    name = ctx.request.get("gate", "async")
    try:
        while not gate(name).is_set():
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        record("cancelled_error", str(ctx.action_id))
        raise
    return "released"


@handler("caps.async_db")
async def async_db(ctx: ActionContext) -> Any:
    from async_actions.models import Action

    row = await sync_to_async(Action.objects.get)(pk=ctx.action_id)
    return {"status_seen": row.status, "handler": row.handler}


@handler("caps.async_user_error")
async def async_user_error(ctx: ActionContext) -> Any:
    await asyncio.sleep(0)
    raise ActionError("The file has no header row")


class AsyncClassHandler(ActionHandler):
    name = "caps.async_class"

    async def handle(self, ctx: ActionContext) -> Any:
        await asyncio.sleep(0)
        return ctx.request["x"] * 3


class ViewLikeHandler(ActionHandler):
    """Like a view's handler: a plain ``handle`` that returns ``run()``'s coroutine."""

    name = "caps.view_like"

    def handle(self, ctx: ActionContext) -> Any:
        return self.run(ctx)

    async def run(self, ctx: ActionContext) -> Any:
        await asyncio.sleep(0)
        ctx.set_progress(50, "half")
        return "ran"


# -- concurrency keys ------------------------------------------------------------------


def _hold(ctx: ActionContext, label: str) -> Any:
    """Record entering and leaving; in between, wait for the gate (or a short hold)."""
    record("enter", label, str(ctx.action_id))
    name = ctx.request.get("gate")
    if name:
        while not gate(name).wait(0.01):
            ctx.raise_if_cancelled()
    else:
        ctx.wait_cancelled(float(ctx.request.get("hold", 0.005)))
    record("leave", label, str(ctx.action_id))
    return label


@handler("caps.import_one", concurrency_key="site-import")
def import_one(ctx: ActionContext) -> Any:
    return _hold(ctx, "import")


@handler("caps.import_refuse", concurrency_key="site-import", on_busy="refuse")
def import_refuse(ctx: ActionContext) -> Any:
    return _hold(ctx, "import-refuse")


@handler(
    "caps.export_per_customer",
    concurrency_key=lambda request: f"export:{request['customer']}",
)
def export_per_customer(ctx: ActionContext) -> Any:
    return _hold(ctx, ctx.request["customer"])


class OneReportPerUser(ActionHandler):
    name = "caps.report_per_user"

    def get_concurrency_key(self, request: Any) -> str | None:
        return f"report:{request['user']}" if request.get("user") else None

    def handle(self, ctx: ActionContext) -> Any:
        return _hold(ctx, "report")


# -- time limits -----------------------------------------------------------------------


@handler("caps.stuck", time_limit=0.2)
def stuck(ctx: ActionContext) -> Any:
    """Ignores cancellation: blocks on its gate (set by the test to let it go)."""
    record("stuck_started", str(ctx.action_id))
    gate(ctx.request.get("gate", "stuck")).wait(60)
    ctx.set_progress(99, "too late")
    return "late result"


@handler("caps.stuck_keyed", time_limit=0.2, concurrency_key="stuck-key")
def stuck_keyed(ctx: ActionContext) -> Any:
    gate(ctx.request.get("gate", "stuck")).wait(60)
    return "late result"


@handler("caps.keyed_quick", concurrency_key="stuck-key")
def keyed_quick(ctx: ActionContext) -> Any:
    return "quick"


@handler("caps.cooperative", time_limit=0.2)
def cooperative(ctx: ActionContext) -> Any:
    while not ctx.wait_cancelled(0.01):
        pass
    record("saw_cancel", str(ctx.action_id))
    ctx.raise_if_cancelled()


@handler("caps.async_slow", time_limit=0.2)
async def async_slow(ctx: ActionContext) -> Any:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        record("async_limit_cancelled", str(ctx.action_id))
        raise


@handler("caps.quick")
def quick(ctx: ActionContext) -> Any:
    return "quick"


@handler("caps.unlimited", time_limit=None)
def unlimited(ctx: ActionContext) -> Any:
    return "unlimited"


# -- retries ---------------------------------------------------------------------------


class FlakyService(Exception):
    """A transient failure worth retrying."""


@handler("caps.flaky", max_attempts=3, retry_on=FlakyService, retry_backoff=0)
def flaky(ctx: ActionContext) -> Any:
    """Fails (after some progress) while ``ctx.attempt <= fail_times``."""
    record("attempt", ctx.attempt)
    ctx.set_progress(40, f"attempt {ctx.attempt}", {"attempt": ctx.attempt})
    ctx.push_state()
    if ctx.attempt <= int(ctx.request.get("fail_times", 0)):
        raise FlakyService(f"upstream timeout on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("caps.flaky_slow", max_attempts=2, retry_on=(FlakyService,), retry_backoff=300)
def flaky_slow(ctx: ActionContext) -> Any:
    if ctx.attempt == 1:
        raise FlakyService("try again much later")
    return "second time lucky"


@handler("caps.flaky_wrong_error", max_attempts=3, retry_on=FlakyService, retry_backoff=0)
def flaky_wrong_error(ctx: ActionContext) -> Any:
    raise KeyError("not retryable")
