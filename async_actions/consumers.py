"""The WebSocket consumer that streams one action's progress to a browser tab.

On connect it authorizes, subscribes to the action through the process's hub
(``async_actions.fanout``), and only then reads the database snapshot: an event
published between the two waits in the subscription, not lost, and ``seq`` tells
whether it is newer than the snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import DatabaseError

from async_actions import service
from async_actions.conf import action_settings
from async_actions.fanout import Hub, Subscriber, hub_for
from async_actions.models import Action
from async_actions.progress import group_name, pusher

__all__ = ["ActionConsumer"]

logger = logging.getLogger("async_actions")

#: Close codes: like HTTP 404 (not yours or missing) and 503 (database down).
CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503
#: RFC 6455 "message too big": clients only ever send small commands.
CLOSE_TOO_BIG = 1009
MAX_CLIENT_FRAME = 4096


class ActionConsumer(AsyncWebsocketConsumer):
    """Sends ``{"type": "update", "action": {...}}`` frames; accepts ``{"type": "cancel"}``."""

    # Events arrive through the hub, not through a channel of each consumer's own.
    channel_layer_alias = None
    action_id: UUID | None = None
    hub: Hub | None = None
    group: str | None = None

    async def connect(self) -> None:
        # The in-memory layer lives on this loop; worker threads hand events to it.
        pusher.attach_loop(asyncio.get_running_loop())
        await self.accept()
        try:
            self.action_id = UUID(str(self.scope["url_route"]["kwargs"]["pk"]))
            allowed = await self._visible()
        except (KeyError, ValueError):
            allowed = False
        except DatabaseError:
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        if not allowed:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        alias = action_settings.CHANNEL_LAYER
        layer = get_channel_layer(alias) if alias else None
        self.subscriber = Subscriber(
            self._send_text, refresh=self._snapshot, on_lost=self._layer_lost
        )
        group = group_name(self.action_id)
        try:
            if layer is None:
                raise LookupError("no channel layer configured")
            hub = hub_for(layer)
            await hub.subscribe(group, self.subscriber)
        except Exception:  # the channel layer (Redis) is down: the page polls instead
            logger.warning(
                "Channel layer unavailable; action %s falls back to polling", self.action_id
            )
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        self.hub, self.group = hub, group
        try:
            snapshot = await self._snapshot()
        except DatabaseError:
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        if snapshot is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.subscriber.last_seq = snapshot["seq"]
        await self.send(text_data=json.dumps({"type": "update", "action": snapshot}))
        hub.mark_ready(self.subscriber)

    async def disconnect(self, code: int) -> None:
        if self.hub is not None and self.group:
            await self.hub.unsubscribe(self.group, self.subscriber)
            self.hub = None

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def _layer_lost(self) -> None:
        """The hub lost the channel layer and dropped this tab: the page polls instead."""
        self.hub = None
        await self.close(code=CLOSE_UNAVAILABLE)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if len(text_data or bytes_data or "") > MAX_CLIENT_FRAME:
            await self.close(code=CLOSE_TOO_BIG)
            return
        try:
            message = json.loads(text_data or "")
        except (ValueError, RecursionError):
            return  # garbage from a client is ignored, never an error
        if isinstance(message, dict) and message.get("type") == "cancel" and self.action_id:
            status = await database_sync_to_async(service.cancel)(self.action_id)
            await self.send(text_data=json.dumps({"type": "cancel", "status": status.value}))

    # -- database ----------------------------------------------------------------------
    def _owned(self) -> Any:
        session = self.scope.get("session")
        session_key = getattr(session, "session_key", None) if session is not None else None
        return Action.objects.owned_by(self.scope.get("user"), session_key)

    async def _visible(self) -> bool:
        return await database_sync_to_async(self._owned().filter(pk=self.action_id).exists)()

    async def _snapshot(self) -> dict[str, Any] | None:
        action = await database_sync_to_async(Action.objects.filter(pk=self.action_id).first)()
        return action.snapshot() if action is not None else None
