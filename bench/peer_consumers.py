"""The fan-out peer: plain Channels groups, as celery-progress's WebSocket mode does it.

Each socket joins the action's channel-layer group itself and forwards every message
the layer hands it: the layer copies, queues and dispatches each event once per socket.
It forwards the event's ready-made JSON text (celery-progress serializes per socket),
so the peer is measured a little cheaper than it is. No ownership check, as in the peer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from async_actions.events import group_name
from async_actions.push import attach_loop


class GroupConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    group = ""

    async def connect(self) -> None:
        # The in-memory layer lives on the server's loop: our publishers must send there.
        attach_loop(asyncio.get_running_loop())
        self.group = group_name(self.scope["url_route"]["kwargs"]["pk"])
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def action_update(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])
