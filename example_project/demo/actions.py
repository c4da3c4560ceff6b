"""Demo handlers, found by async_actions' autodiscovery of ``actions`` modules."""

from __future__ import annotations

from typing import Any

from async_actions.context import ActionContext
from async_actions.handlers import handler


@handler("demo.countdown")
def countdown(ctx: ActionContext) -> dict[str, Any]:
    """Count down ``seconds`` (default 10), one step per second, cancellable."""
    seconds = max(1, min(int((ctx.request or {}).get("seconds", 10)), 3600))
    for done in range(seconds):
        ctx.set_progress(100 * done / seconds, f"{seconds - done} seconds left")
        if ctx.wait_cancelled(1.0):
            ctx.raise_if_cancelled()
    ctx.set_progress(100, "Lift-off")
    ctx.log.info("Counted down %d seconds", seconds)
    return {"seconds": seconds}


# -- handler capabilities (docs/handlers.md) -------------------------------------------


@handler("demo.async_countdown", time_limit=120)
async def async_countdown(ctx: ActionContext) -> dict[str, Any]:
    """The countdown as ``async def``: a cancel arrives as CancelledError at the await."""
    import asyncio

    seconds = max(1, min(int((ctx.request or {}).get("seconds", 10)), 60))
    for done in range(seconds):
        ctx.set_progress(100 * done / seconds, f"{seconds - done} seconds left")
        await asyncio.sleep(1.0)
    return {"seconds": seconds}


@handler("demo.site_import", concurrency_key="demo-site-import")
def site_import(ctx: ActionContext) -> dict[str, Any]:
    """One import per site at a time; later ones wait in pending, oldest first."""
    for step in range(5):
        ctx.set_progress(20 * step, f"Importing batch {step + 1} of 5")
        if ctx.wait_cancelled(1.0):
            ctx.raise_if_cancelled()
    return {"batches": 5}


class FlakyUpstream(Exception):
    """A transient failure of a pretend upstream service."""


@handler("demo.flaky_sync", max_attempts=3, retry_on=FlakyUpstream, retry_backoff=2)
def flaky_sync(ctx: ActionContext) -> dict[str, Any]:
    """Fails on its first attempt, then succeeds: watch the attempt number change."""
    ctx.set_progress(50, f"Attempt {ctx.attempt}")
    if ctx.wait_cancelled(1.0):
        ctx.raise_if_cancelled()
    if ctx.attempt == 1:
        raise FlakyUpstream("the upstream timed out")
    return {"attempt": ctx.attempt}


@handler("demo.noop")
def noop(ctx: ActionContext) -> None:
    """Does nothing: the benchmarks measure what an action costs besides its work."""
