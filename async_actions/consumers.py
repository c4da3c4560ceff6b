"""The WebSocket consumer that streams one action's progress to a browser tab.

On connect it authorizes, joins the action's group, and only then reads the database
snapshot: an event published between the two is queued in the channel, not lost, and
``seq`` tells which queued events are newer than the snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import DatabaseError

from async_actions import service
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

_TERMINAL = {str(s) for s in Action.TERMINAL_STATUSES}


class ActionConsumer(AsyncWebsocketConsumer):
    """Sends ``{"type": "update", "action": {...}}`` frames; accepts ``{"type": "cancel"}``."""

    action_id: UUID | None = None
    last_seq = -1

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
        try:
            await self.channel_layer.group_add(group_name(self.action_id), self.channel_name)
        except Exception:  # the channel layer (Redis) is down: the page polls instead
            logger.warning(
                "Channel layer unavailable; action %s falls back to polling", self.action_id
            )
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        self.group = group_name(self.action_id)
        try:
            snapshot = await self._snapshot()
        except DatabaseError:
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        if snapshot is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.last_seq = snapshot["seq"]
        await self.send(text_data=json.dumps({"type": "update", "action": snapshot}))

    async def disconnect(self, code: int) -> None:
        group = getattr(self, "group", None)
        if group:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:  # the layer expires the membership by itself
                logger.debug("group_discard failed for %s", group, exc_info=True)

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

    async def action_update(self, event: dict[str, Any]) -> None:
        """A published change: forward it unless the client already has newer state."""
        seq = event.get("seq", 0)
        if seq <= self.last_seq and event.get("status") not in _TERMINAL:
            return
        self.last_seq = max(self.last_seq, seq)
        await self.send(text_data=event["text"])

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
