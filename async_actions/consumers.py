"""The WebSocket consumer that streams one action's progress to a browser tab.

On connect it authorizes (before accepting the handshake), subscribes to the action
through the process's hub (``async_actions.fanout``), and only then reads the database
snapshot: an event published between the two waits in the subscription, not lost, and
``seq`` tells whether it is newer than the snapshot.
"""

from __future__ import annotations

import enum
import json
import logging
from collections import Counter
from typing import Any
from uuid import UUID

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import DatabaseError
from django.db.models import QuerySet

from async_actions import ownership, service
from async_actions.addresses import scope_address
from async_actions.conf import action_settings
from async_actions.events import group_name
from async_actions.fairness import Owner
from async_actions.fanout import Hub, Subscriber, hub_for
from async_actions.models import Action
from async_actions.payloads import loads

__all__ = ["ActionConsumer", "CloseCode"]

logger = logging.getLogger("async_actions")


class CloseCode(enum.IntEnum):
    """Every close code the consumer sends; docs/views.md lists them for page authors.

    Application codes (4000-4999), since an ASGI server such as daphne lets an
    application send only 1000 and 3000-4999. The last three digits echo the HTTP status
    of the same meaning.
    """

    #: Not yours, or no such action (like HTTP 404): the page stops and says so.
    NOT_FOUND = 4404
    #: A frame larger than ``MAX_CLIENT_FRAME`` (like HTTP 413).
    TOO_BIG = 4413
    #: More than ``MAX_SOCKETS_PER_OWNER_ACTION`` sockets to one action, or
    #: ``MAX_SOCKETS_PER_OWNER`` to all actions together (like HTTP 429).
    TOO_MANY = 4429
    #: The database or the channel layer is down (like HTTP 503): the page polls.
    UNAVAILABLE = 4503


#: The names these codes had before ``CloseCode``.
CLOSE_NOT_FOUND = CloseCode.NOT_FOUND
CLOSE_UNAVAILABLE = CloseCode.UNAVAILABLE
CLOSE_TOO_BIG = CloseCode.TOO_BIG
MAX_CLIENT_FRAME = 4096

#: Columns the authorization read leaves unread (it only needs the owner's).
_UNSHOWN = ("request", "response", "log", "traceback", "data")
#: Answers to a cancel frame that stay true for the life of the socket.
_SETTLED_CANCEL_ANSWERS = frozenset(
    {"forbidden", service.OpStatus.OK.value, service.OpStatus.ACTION_COMPLETED.value}
)

#: Open sockets per (owner, action) in this process, for ``MAX_SOCKETS_PER_OWNER_ACTION``.
_open_sockets: Counter[tuple[Owner | None, UUID]] = Counter()
#: Open sockets per owner in this process, all actions together, for ``MAX_SOCKETS_PER_OWNER``.
_owner_sockets: Counter[Owner | None] = Counter()


class ActionConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    """Sends ``{"type": "update", "action": {...}}`` frames; accepts ``{"type": "cancel"}``.

    Authorization is decided before the handshake is accepted, and a connection holds no
    state (action, socket slot, subscription) and acts on no frame until it is complete:
    a frame a client sends before or after a refusal is ignored. A refused connection is
    accepted only to carry its close code (4404, 4429, 4503) to the page.
    """

    # Events arrive through the hub, not through a channel of each consumer's own.
    channel_layer_alias = None
    action_id: UUID | None = None
    hub: Hub | None = None
    group: str | None = None
    #: True once the connection passed every check and sent its snapshot; frames count only then.
    authorized = False
    _slot: tuple[Owner | None, UUID] | None = None
    #: The answer to this socket's cancel once it cannot change (see ``_cancel``).
    _cancel_answer: str | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # however the consumer ends (disconnect, cancelled by the server, error)
            self._release_slot()

    async def connect(self) -> None:
        try:
            action_id = UUID(str(self.scope["url_route"]["kwargs"]["pk"]))
            allowed = await database_sync_to_async(self._may_see)(action_id)
        except (KeyError, ValueError):
            allowed = False
        except DatabaseError:
            await self._refuse(CloseCode.UNAVAILABLE)
            return
        if not allowed:
            await self._refuse(CloseCode.NOT_FOUND)
            return
        if not self._take_slot(action_id):
            await self._refuse(CloseCode.TOO_MANY)
            return
        self.action_id = action_id
        await self.accept()
        alias = action_settings.CHANNEL_LAYER
        layer = get_channel_layer(alias) if alias else None
        self.subscriber = Subscriber(
            self._send_text,
            refresh=self._snapshot,
            on_lost=self._layer_lost,
            send_frame=self._send_frame,
        )
        group = group_name(action_id)
        try:
            if layer is None:
                raise LookupError("no channel layer configured")
            hub = hub_for(layer)
            await hub.subscribe(group, self.subscriber)
        except Exception:  # the channel layer (Redis) is down: the page polls instead
            logger.warning("Channel layer unavailable; action %s falls back to polling", action_id)
            await self._close(CloseCode.UNAVAILABLE)
            return
        self.hub, self.group = hub, group
        try:
            snapshot = await self._snapshot()
        except DatabaseError:
            await self._close(CloseCode.UNAVAILABLE)
            return
        if snapshot is None:
            await self._close(CloseCode.NOT_FOUND)
            return
        self.subscriber.last_seq = snapshot["seq"]
        await self.send(text_data=json.dumps({"type": "update", "action": snapshot}))
        self.authorized = True
        hub.mark_ready(self.subscriber)

    async def disconnect(self, code: int) -> None:
        self.authorized = False
        self._release_slot()
        if self.hub is not None and self.group:
            await self.hub.unsubscribe(self.group, self.subscriber)
            self.hub = None

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        """Write a ``websocket.send`` message the hub made once for every tab."""
        await self.base_send(frame)

    async def _layer_lost(self) -> None:
        """The hub lost the channel layer and dropped this tab: the page polls instead."""
        self.hub = None
        await self._close(CloseCode.UNAVAILABLE)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.authorized:
            return  # a refused, closing or not yet set up connection: nothing it sends counts
        if len(text_data or bytes_data or "") > MAX_CLIENT_FRAME:
            await self._close(CloseCode.TOO_BIG)
            return
        try:
            message = loads(text_data or "", "A frame")  # depth-checked: MAX_JSON_DEPTH
        except (ValueError, RecursionError):
            return  # garbage from a client is ignored, never an error
        if isinstance(message, dict) and message.get("type") == "cancel" and self.action_id:
            await self._cancel(self.action_id)

    async def _cancel(self, action_id: UUID) -> None:
        # A settled answer (asked to stop, already finished, forbidden) cannot change:
        # repeat it without the database, so a flood of cancel frames costs no queries.
        answer = self._cancel_answer
        if answer is None:
            if not await database_sync_to_async(self._may_control)(action_id):
                answer = "forbidden"  # watching with view_action does not include cancelling
            else:
                answer = (await database_sync_to_async(service.cancel)(action_id)).value
            if answer in _SETTLED_CANCEL_ANSWERS:
                self._cancel_answer = answer
        await self.send(text_data=json.dumps({"type": "cancel", "status": answer}))

    # -- refusing and closing ----------------------------------------------------------
    async def _refuse(self, code: CloseCode) -> None:
        """Turn the handshake down with ``code``: accepted only so the page can read it."""
        await self.accept()
        await self.close(code=int(code))

    async def _close(self, code: CloseCode) -> None:
        self.authorized = False
        await self.close(code=int(code))

    # -- sockets per owner and action --------------------------------------------------
    def _owner_key(self) -> Owner | None:
        return ownership.visitor_owner(
            self.scope.get("user"), self.scope.get("session"), scope_address(self.scope)
        )

    def _take_slot(self, action_id: UUID) -> bool:
        """Count this socket against its owner and action; False when over the cap."""
        cap = action_settings.MAX_SOCKETS_PER_OWNER_ACTION
        total = action_settings.MAX_SOCKETS_PER_OWNER
        key = (self._owner_key(), action_id)
        if cap is not None and _open_sockets[key] >= cap:
            return False
        if total is not None and _owner_sockets[key[0]] >= total:
            return False
        _open_sockets[key] += 1
        _owner_sockets[key[0]] += 1
        self._slot = key
        return True

    def _release_slot(self) -> None:
        key, self._slot = self._slot, None
        if key is not None:
            _open_sockets[key] -= 1
            if _open_sockets[key] <= 0:
                del _open_sockets[key]
            _owner_sockets[key[0]] -= 1
            if _owner_sockets[key[0]] <= 0:
                del _owner_sockets[key[0]]

    # -- authorization (sync: run through database_sync_to_async) ----------------------
    def _visible_queryset(self) -> QuerySet[Action]:
        """Actions this connection may watch: the same rule as the pages and the API."""
        return ownership.visible_actions(self.scope.get("user"), self.scope.get("session"))

    def _may_see(self, action_id: UUID) -> bool:
        if type(self)._visible_queryset is not ActionConsumer._visible_queryset:
            return self._visible_queryset().filter(pk=action_id).exists()
        # The default rule, decided so that an owner's socket costs one read, not the
        # permission queries as well.
        user, session = self.scope.get("user"), self.scope.get("session")
        return ownership.visible_action(user, session, action_id, defer=_UNSHOWN) is not None

    def _may_control(self, action_id: UUID) -> bool:
        """Whether this connection may cancel the action (its owner, or change_action)."""
        user, session = self.scope.get("user"), self.scope.get("session")
        return ownership.controllable_actions(user, session).filter(pk=action_id).exists()

    # -- database ----------------------------------------------------------------------
    async def _snapshot(self) -> dict[str, Any] | None:
        if self.action_id is None:
            return None
        action = await database_sync_to_async(Action.objects.filter(pk=self.action_id).first)()
        return service.live(action).snapshot() if action is not None else None
