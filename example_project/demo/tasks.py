"""Plain functions the demo starts with ``perform()``: no handler class, no decorator."""

from __future__ import annotations

import time

from async_actions.context import current


def make_thumbnails(count: int = 12, seconds_each: float = 0.4) -> dict[str, int]:
    """Pretend to render ``count`` thumbnails; reports progress when run as an action."""
    ctx = current()
    for done in range(count):
        if ctx is not None:
            ctx.raise_if_cancelled()
            ctx.set_progress(100 * done / count, f"Thumbnail {done + 1} of {count}")
        time.sleep(seconds_each)
    return {"thumbnails": count}
