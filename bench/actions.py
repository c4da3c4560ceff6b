"""Handlers the benchmarks run inside a server process (the ``bench`` app is installed
only by bench/settings_peer.py)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from async_actions.context import ActionContext
from async_actions.handlers import handler


@handler("bench.stamp")
def stamp(ctx: ActionContext) -> dict[str, float]:
    """Returns when its body started, for the start latency figure."""
    return {"t": time.time()}


@handler("bench.ticker")
def ticker(ctx: ActionContext) -> dict[str, Any]:
    """Reports progress ``hz`` times a second for ``seconds``, each stamped with time.time().

    ``jitter`` spreads the updates randomly around the period, so a polling client
    sees them at random phases of its interval. With ``go_file``, ticking starts once
    that file exists (a benchmark connects its clients first, then creates it).
    """
    hz, seconds = float(ctx.request.get("hz", 10)), float(ctx.request.get("seconds", 10))
    jitter = bool(ctx.request.get("jitter", False))
    go_file = ctx.request.get("go_file")
    while go_file and not os.path.exists(go_file):
        if ctx.wait_cancelled(0.1):  # 100 of these wait beside the server: poll gently
            ctx.raise_if_cancelled()
    count = int(hz * seconds)
    start = time.monotonic()
    for i in range(count):
        due = start + (i + 1) / hz
        if jitter:
            due += random.uniform(-0.4, 0.4) / hz
        delay = due - time.monotonic()
        if delay > 0 and ctx.wait_cancelled(delay):
            ctx.raise_if_cancelled()
        ctx.set_progress(100 * i / count, f"tick {i}", {"t": time.time(), "i": i})
    return {"ticks": count}


@handler("bench.aticker")
async def aticker(ctx: ActionContext) -> dict[str, Any]:
    """``bench.ticker`` as ``async def``: many at once share the runner's one event loop
    instead of holding a thread each."""
    import asyncio

    hz, seconds = float(ctx.request.get("hz", 10)), float(ctx.request.get("seconds", 10))
    count = int(hz * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + (i + 1) / hz - loop.time()))
        ctx.set_progress(100 * i / count, f"tick {i}", {"t": time.time(), "i": i})
    return {"ticks": count}
