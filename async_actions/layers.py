"""An in-memory channel layer that stays fast with many WebSockets in one process.

Channels' ``InMemoryChannelLayer`` scans every channel queue and every group membership
for expired entries on each send, receive and group send. A progress event to a group of
10 tabs is 11 such scans; with 1,000 tabs connected, fan-out becomes quadratic and
events queue for seconds (measured in bench/bench_fanout.py, docs/performance.md).
Expiry is a safety net for consumers that vanish without leaving their groups, so doing
it at most once per ``clean_interval`` changes nothing users can see.

A group send puts the message on each member's queue in turn. Channels' version starts a
task per member and waits on them with ``asyncio.as_completed`` (and builds a spare
``asyncio.Queue`` on every send), though putting on a queue never waits: with 100 actions
at 10 Hz that was a third of the server loop's time in bench/bench_fanout.py.

It also gives the channels of ``async_actions.fanout`` hubs room for ``HUB_CAPACITY``
messages (Channels' default is 100 per channel), as a Redis layer should be configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as _ChannelsInMemoryChannelLayer

__all__ = ["HUB_CAPACITY", "HUB_CHANNEL_PREFIX", "InMemoryChannelLayer"]

#: Channel names of ``async_actions.fanout`` hubs start with this; a Redis layer should
#: give them room in ``channel_capacity`` too.
HUB_CHANNEL_PREFIX = "async_actions.hub"
#: The room this layer gives a hub channel (Channels' default is 100 per channel).
HUB_CAPACITY = 10_000


class InMemoryChannelLayer(_ChannelsInMemoryChannelLayer):  # type: ignore[misc]  # untyped base
    """Channels' in-memory layer with expiry cleanup at most every ``clean_interval`` s.

    Use it in ``CHANNEL_LAYERS`` like Channels' own::

        {"default": {"BACKEND": "async_actions.layers.InMemoryChannelLayer"}}
    """

    def __init__(
        self,
        *args: Any,
        clean_interval: float = 1.0,
        channel_capacity: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        # A hub channel carries every action's events for the whole process.
        capacity = {f"{HUB_CHANNEL_PREFIX}*": HUB_CAPACITY, **(channel_capacity or {})}
        super().__init__(*args, **kwargs)
        # Channels' in-memory layer keeps the dict as given, which get_capacity cannot
        # read; compiled here as channels_redis does.
        self.channel_capacity = self.compile_capacities(capacity)
        self.clean_interval = clean_interval
        self._last_clean = float("-inf")

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_clean < self.clean_interval:
            return
        self._last_clean = now
        super()._clean_expired()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Channels' ``send``, without building a queue the channel already has."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        try:
            queue.put_nowait((time.time() + self.expiry, deepcopy(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Put ``message`` on each member's queue in turn; a full one is skipped, as in
        Channels (each member gets its own copy)."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            with contextlib.suppress(ChannelFull):
                await self.send(channel, message)
