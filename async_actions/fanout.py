"""One channel-layer subscription per process and action, shared by every tab watching.

Joining each WebSocket to the action's group makes the channel layer copy, queue and
dispatch every event once per tab, and forward every one of them even when a tab is
already behind. The hub joins the group once per process, keeps only the newest state
for each tab, and writes it when the server has time: a tab that falls behind skips
stale progress instead of queueing it, so what it shows stays current under load. The
final state is never skipped.

Each event loop (one per server process) has its own hub per channel layer.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from async_actions.layers import HUB_CHANNEL_PREFIX
from async_actions.models import Action
from async_actions.progress import EVENT_TYPE

logger = logging.getLogger("async_actions")

__all__ = ["Hub", "Subscriber", "hub_for"]

#: Frames written between two reads of the layer, so the hub channel never fills up.
SENDS_PER_YIELD = 32
TERMINAL = frozenset(str(status) for status in Action.TERMINAL_STATUSES)


class Subscriber:
    """One tab's view of one action: the newest event not yet written to it.

    ``send`` writes a frame's text to the tab. Nothing is written before ``ready``
    (the consumer sends its database snapshot first and sets ``last_seq`` from it).
    """

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self.send = send
        self.last_seq = -1
        self.ready = False
        self.pending: dict[str, Any] | None = None
        #: Events never written because a newer (or the final) one took their place.
        self.skipped = 0

    def offer(self, event: dict[str, Any]) -> None:
        """Keep whichever of ``event`` and the waiting one is newer; the final state wins."""
        pending = self.pending
        if pending is None:
            self.pending = event
            return
        self.skipped += 1
        if pending.get("status") in TERMINAL:
            return  # nothing comes after the final state
        if event.get("status") in TERMINAL or event.get("seq", 0) > pending.get("seq", 0):
            self.pending = event

    async def deliver(self) -> None:
        if not self.ready or self.pending is None:
            return
        event, self.pending = self.pending, None
        seq = event.get("seq", 0)
        if seq <= self.last_seq and event.get("status") not in TERMINAL:
            return  # the tab already has this state (from the snapshot)
        self.last_seq = max(self.last_seq, seq)
        await self.send(event["text"])


class Hub:
    """Routes a process's action events from one layer channel to its subscribers."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel: str | None = None
        self._subscribers: dict[str, set[Subscriber]] = {}
        #: One join per group, awaited by every subscriber that arrives while it runs.
        self._joined: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[Subscriber] = set()
        self._reader: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def subscribe(self, group: str, subscriber: Subscriber) -> None:
        """Add ``subscriber``; once this returns, every later event for ``group`` reaches it.

        Raises what the channel layer raises when it cannot join the group.
        """
        if self.channel is None:
            channel = await self.layer.new_channel(prefix=HUB_CHANNEL_PREFIX)
            if self.channel is None:  # another subscriber may have named it meanwhile
                self.channel = channel
        self._subscribers.setdefault(group, set()).add(subscriber)
        joined = self._joined.get(group)
        if joined is None:
            joined = self._joined[group] = asyncio.get_running_loop().create_task(self._join(group))
        try:
            await asyncio.shield(joined)
        except BaseException:
            self._remove(group, subscriber)
            raise

    async def _join(self, group: str) -> None:
        try:
            await self.layer.group_add(group, self.channel)
        except BaseException:
            self._joined.pop(group, None)  # the next subscriber tries again
            raise
        self._ensure_reader()

    async def unsubscribe(self, group: str, subscriber: Subscriber) -> None:
        subscriber.ready = False
        self._dirty.discard(subscriber)
        if self._remove(group, subscriber) and self._joined.pop(group, None) is not None:
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception:  # the layer expires the membership by itself
                logger.debug("group_discard failed for %s", group, exc_info=True)
        if not self._subscribers and self._reader is not None:
            self._reader.cancel()
            self._reader = None

    def mark_ready(self, subscriber: Subscriber) -> None:
        """The consumer has sent its snapshot; write what arrived meanwhile."""
        subscriber.ready = True
        if subscriber.pending is not None:
            self._schedule(subscriber)

    # -- internals ----------------------------------------------------------------------
    def _remove(self, group: str, subscriber: Subscriber) -> bool:
        """Forget ``subscriber``; True if ``group`` has no subscribers left."""
        members = self._subscribers.get(group)
        if members is None:
            return False
        members.discard(subscriber)
        if members:
            return False
        del self._subscribers[group]
        return True

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        delay = 0.1
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("Channel layer receive failed; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self.dispatch(message)

    def dispatch(self, message: dict[str, Any]) -> None:
        """Hand one layer message to the subscribers of its action."""
        if message.get("type") != EVENT_TYPE:
            return
        group = message.get("group")
        members = self._subscribers.get(group) if group else None
        if not members:
            return
        for subscriber in members:
            subscriber.offer(message)
            if subscriber.ready:
                self._schedule(subscriber)

    def _schedule(self, subscriber: Subscriber) -> None:
        self._dirty.add(subscriber)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # Yield first, so every event already queued on the loop is merged before
        # anything is written: under load one frame carries many updates.
        await asyncio.sleep(0)
        while self._dirty:
            batch, self._dirty = self._dirty, set()
            for count, subscriber in enumerate(batch, 1):
                try:
                    await subscriber.deliver()
                except Exception:  # a tab that went away; its consumer cleans up
                    logger.debug("Writing to a WebSocket failed", exc_info=True)
                if count % SENDS_PER_YIELD == 0:
                    await asyncio.sleep(0)  # let the reader merge newer events
            await asyncio.sleep(0)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Hub]] = (
    weakref.WeakKeyDictionary()
)


def hub_for(layer: Any) -> Hub:
    """The hub of ``layer`` on the running event loop."""
    loop = asyncio.get_running_loop()
    hubs = _hubs.setdefault(loop, {})
    hub = hubs.get(id(layer))
    if hub is None or hub.layer is not layer:
        hub = hubs[id(layer)] = Hub(layer)
    return hub
