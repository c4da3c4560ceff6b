"""One channel-layer subscription per process and action, shared by every tab watching.

Joining each WebSocket to the action's group makes the channel layer copy, queue and
dispatch every event once per tab, and forward every one of them even when a tab is
already behind. The hub joins the group once per process, keeps only the newest state
for each tab, and writes it when the server has time: a tab that falls behind skips
stale progress instead of queueing it, so what it shows stays current under load. The
final state is never skipped.

Each event loop (one per server process) has its own hub per channel layer.

The layer can go away (Redis stopped) or come back empty (Redis restarted: every group
membership gone, often without the hub seeing an error). The hub sends itself a probe
through a group of its own every ``LAYER_CHECK_INTERVAL``; when the probe does not come
back, or a receive fails, it joins every group again and offers each tab a fresh database
snapshot, so nothing published meanwhile is missed. When it cannot join, it tells every
subscriber (``on_lost``), whose consumer closes with 4503 so the page polls.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from async_actions.conf import action_settings
from async_actions.events import EVENT_TYPE, event_for
from async_actions.layers import HUB_CHANNEL_PREFIX
from async_actions.models import Action
from async_actions.push import attach_loop, layer_call

logger = logging.getLogger("async_actions")

__all__ = ["Hub", "Subscriber", "hub_for"]

#: Frames written between two reads of the layer, so the hub channel never fills up.
SENDS_PER_YIELD = 32
TERMINAL = frozenset(str(status) for status in Action.TERMINAL_STATUSES)
#: Where an event keeps its ready-made ASGI frame (added in this process, never sent on).
FRAME_KEY = "_asgi_frame"
#: The message a hub sends itself to learn that its group memberships still hold.
PROBE_TYPE = "async_actions.hub_probe"
#: Seconds a rejoin may take before the layer counts as gone (a partitioned Redis may
#: never answer).
LAYER_TIMEOUT = 10.0
#: Channels' default ``group_expiry``; a layer without the attribute is taken to use it.
DEFAULT_GROUP_EXPIRY = 86400.0


class Subscriber:
    """One tab's view of one action: the newest event not yet written to it.

    ``send`` writes a frame's text to the tab. Nothing is written before ``ready``
    (the consumer sends its database snapshot first and sets ``last_seq`` from it).
    ``refresh`` reads the action's snapshot from the database (the hub offers it after
    memberships were lost, so events published meanwhile are not missed); ``on_lost``
    is awaited when the channel layer is gone and this subscriber was dropped.
    """

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        *,
        refresh: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
        on_lost: Callable[[], Awaitable[None]] | None = None,
        send_frame: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.send = send
        #: Writes a ready ASGI ``websocket.send`` message (the consumer's ``base_send``):
        #: the hub builds it once per event, not once per tab. ``send`` is used without it.
        self.send_frame = send_frame
        self.refresh = refresh
        self.on_lost = on_lost
        self.last_seq = -1
        self.ready = False
        self.pending: dict[str, Any] | None = None
        #: Events never written because a newer (or the final) one took their place.
        self.skipped = 0
        self.finished = False

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
        final = event.get("status") in TERMINAL
        if seq <= self.last_seq and (not final or self.finished):
            return  # the tab already has this state (from the snapshot or a refresh)
        self.last_seq = max(self.last_seq, seq)
        self.finished = self.finished or final
        if self.send_frame is not None:
            await self.send_frame(frame_of(event))
        else:
            await self.send(event["text"])


def frame_of(event: dict[str, Any]) -> dict[str, Any]:
    """The ASGI message that writes ``event``'s text: made once, shared by every tab
    (the server only reads it)."""
    frame = event.get(FRAME_KEY)
    if frame is None:
        frame = event[FRAME_KEY] = {"type": "websocket.send", "text": event["text"]}
    return frame


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
        self._watchdog: asyncio.Task[None] | None = None
        #: A group only this hub is in: its probes coming back prove the memberships hold.
        self._probe_group = f"async_actions.hubprobe.{uuid.uuid4().hex}"
        self._probe_joined = False
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._rejoin_lock = asyncio.Lock()
        self._joined_at = 0.0
        #: Times the hub joined every group again, and times it gave up (tabs closed).
        self.rejoins = 0
        self.losses = 0

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
        if subscriber not in self._subscribers.get(group, ()):
            # The layer was lost while the join ran: the subscriber was dropped.
            raise ConnectionError("the channel layer was lost while joining")

    async def _join(self, group: str) -> None:
        try:
            if not self._probe_joined:
                await self._add(self._probe_group)
                self._probe_joined = True
                self._joined_at = time.monotonic()
            await self._add(group)
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
        if not self._subscribers:
            await self._stop()

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
        loop = asyncio.get_running_loop()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read())
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = loop.create_task(self._watch())

    async def _add(self, group: str) -> None:
        await layer_call(self.layer.group_add, group, self.channel)

    async def _add_all(self, groups: list[str]) -> None:
        await self._add(self._probe_group)
        for group in groups:
            await self._add(group)

    async def _stop(self) -> None:
        """No tab is left: stop reading and probing, leave the probe group."""
        current = asyncio.current_task()
        for task in (self._reader, self._watchdog):
            if task is not None and task is not current:
                task.cancel()
        self._reader = self._watchdog = None
        if self._probe_joined:
            self._probe_joined = False
            try:
                await self.layer.group_discard(self._probe_group, self.channel)
            except Exception:  # the layer expires the membership by itself
                logger.debug("group_discard failed for the probe group", exc_info=True)

    async def _read(self) -> None:
        delay = 0.1
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis went away, or came back without our memberships.
                logger.warning("Channel layer receive failed", exc_info=True)
                if not await self._rejoin():
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self.dispatch(message)

    async def _watch(self) -> None:
        """Probe the memberships every ``LAYER_CHECK_INTERVAL``; rejoin before they expire."""
        interval = float(action_settings.LAYER_CHECK_INTERVAL)
        expiry = float(getattr(self.layer, "group_expiry", None) or DEFAULT_GROUP_EXPIRY)
        while True:
            await asyncio.sleep(interval)
            if await self._probe(timeout=interval):
                if time.monotonic() - self._joined_at < expiry / 2:
                    continue
                refresh = False  # renew the memberships before group_expiry ends them
            else:
                logger.warning("Channel layer lost this process's subscriptions; rejoining")
                refresh = True
            if not await self._rejoin(refresh=refresh):
                return

    async def _probe(self, timeout: float) -> bool:
        """True if a message sent to the probe group came back within ``timeout``."""
        nonce = uuid.uuid4().hex
        arrived = self._probes[nonce] = asyncio.get_running_loop().create_future()
        try:
            await layer_call(
                self.layer.group_send, self._probe_group, {"type": PROBE_TYPE, "nonce": nonce}
            )
            await asyncio.wait_for(arrived, timeout)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        finally:
            self._probes.pop(nonce, None)
        return True

    async def _rejoin(self, refresh: bool = True) -> bool:
        """Join the probe group and every watched group again; False if the layer is gone.

        With ``refresh``, each group's subscribers are offered the database snapshot,
        as events may have been published while the memberships were missing.
        """
        async with self._rejoin_lock:
            groups = list(self._subscribers)
            try:
                # A partitioned Redis may never answer: that counts as gone too.
                await asyncio.wait_for(self._add_all(groups), LAYER_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "Channel layer unavailable; %d watched actions fall back to polling",
                    len(groups),
                    exc_info=True,
                )
                await self._lose()
                return False
            self._probe_joined = True
            self._joined_at = time.monotonic()
            self.rejoins += 1
        if refresh:
            for group in groups:
                await self._refresh(group)
        return True

    async def _refresh(self, group: str) -> None:
        """Offer ``group``'s subscribers the action's stored state (one read per group)."""
        members = self._subscribers.get(group)
        reader = next((s.refresh for s in members or () if s.refresh is not None), None)
        if reader is None:
            return
        try:
            snapshot = await reader()
        except Exception:  # the database is down: the next event or the page's poll tells
            logger.warning("Could not refresh %s after rejoining", group, exc_info=True)
            return
        if snapshot is not None:
            self.dispatch(event_for(snapshot, group))

    async def _lose(self) -> None:
        """The layer is gone: drop every subscriber and tell each one (the tab polls)."""
        self.losses += 1
        dropped = [member for members in self._subscribers.values() for member in members]
        self._subscribers.clear()
        self._joined.clear()
        self._dirty.clear()
        self._probe_joined = False  # nothing to leave: the layer is gone
        await self._stop()
        for subscriber in dropped:
            subscriber.ready = False
            if subscriber.on_lost is not None:
                try:
                    await subscriber.on_lost()
                except Exception:
                    logger.debug("Telling a subscriber the layer is lost failed", exc_info=True)

    def dispatch(self, message: dict[str, Any]) -> None:
        """Hand one layer message to the subscribers of its action."""
        if message.get("type") == PROBE_TYPE:
            arrived = self._probes.get(str(message.get("nonce")))
            if arrived is not None and not arrived.done():
                arrived.set_result(None)
            return
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
    """The hub of ``layer`` on the running event loop.

    The loop is the server's: it is named to the transport (``push.attach_loop``) before
    the hub joins any group, so events for the in-memory layer reach it from any thread.
    """
    loop = asyncio.get_running_loop()
    attach_loop(loop)
    hubs = _hubs.setdefault(loop, {})
    hub = hubs.get(id(layer))
    if hub is None or hub.layer is not layer:
        hub = hubs[id(layer)] = Hub(layer)
    return hub
