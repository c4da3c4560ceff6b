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
