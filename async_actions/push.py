"""The transport: hands action events from any thread to the channel layer.

Publishers run in worker threads (and a request's thread, and the supervisor's); the
channel layer is asyncio code. :data:`pusher` sends each event without blocking the
caller and without waiting for the result (a failure is counted and logged):

- a Redis layer (or any other cross-process layer) is called on the transport's own
  loop, a daemon thread started on the first push;
- Channels' in-memory layer only works on the event loop its listeners run on (its
  queues and futures are not thread-safe), so its events go to the *server's* loop,
  which :func:`attach_loop` names. The WebSocket hub (``fanout.hub_for``) names it as it
  is made, before it joins any group, and ``async_actions.startup()`` names it when
  called inside the server's loop. Before any loop is named, nobody of this package
  listens in this process; the event still goes to the layer, on the transport's own
  loop, for a listener of the user's that joined the group.

What is promised: an event pushed reaches every channel in the action's group *at the
time of the push*, whichever thread pushed and whether or not a WebSocket ever
connected. Channel layers keep no history, so a subscriber that joins later gets
nothing from it: it reads the stored state instead (consumers subscribe before they read
the snapshot, DESIGN.md "Subscribe without gaps").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any
from uuid import UUID

from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer

from async_actions.conf import action_settings
from async_actions.events import event_for, group_name

if TYPE_CHECKING:
    from async_actions.models import Action

__all__ = ["LAYER_TRIES", "Pusher", "attach_loop", "layer_call", "push_action", "pusher"]

logger = logging.getLogger("async_actions")

#: Tries of one layer call: each connection pooled before a Redis restart fails once.
LAYER_TRIES = 3


class Pusher:
    """Sends events to the channel layer without blocking the caller (see the module)."""

    def __init__(self) -> None:
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._layer_cache: tuple[str | None, Any] | None = None
        #: Pushes from other threads waiting for their loop to start them, and whether a
        #: wake-up of that loop is on its way.
        self._queued: dict[
            asyncio.AbstractEventLoop, deque[Callable[[], Coroutine[Any, Any, Any]]]
        ] = {}
        self._waking: dict[asyncio.AbstractEventLoop, bool] = {}
        #: Pushes whose layer call failed (after ``LAYER_TRIES``), since the process started.
        self.failures = 0

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Name the server's loop: in-memory layer events are handed to it from now on."""
        self._server_loop = loop

    @property
    def server_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop named by :meth:`attach_loop` while it is open, else None."""
        loop = self._server_loop
        return loop if loop is not None and not loop.is_closed() else None

    def reset(self) -> None:
        """Forget the layer (after ``CHANNEL_LAYERS`` changed, in tests)."""
        self._layer_cache = None

    def layer(self) -> Any:
        """The ``CHANNEL_LAYER`` layer, or None when none is configured or it fails to load."""
        alias = action_settings.CHANNEL_LAYER
        cached = self._layer_cache
        # Channels builds a new layer when its backends are reset (a settings change in
        # tests): pushing to the one it replaced would reach no consumer.
        if (
            cached is not None
            and cached[0] == alias
            and (cached[1] is None or channel_layers.backends.get(alias) is cached[1])
        ):
            return cached[1]
        layer = None
        if alias:
            try:
                layer = get_channel_layer(alias)
            except Exception:
                logger.exception("Channel layer %r could not be loaded", alias)
        self._layer_cache = (alias, layer)
        return layer

    def push(self, action_id: UUID | str, snapshot: dict[str, Any]) -> None:
        """Send ``snapshot`` (an ``events.snapshot``) to the action's group; returns at once."""
        layer = self.layer()
        if layer is None:
            return
        group = group_name(action_id)
        in_memory = isinstance(layer, InMemoryChannelLayer)
        # Nobody in the in-memory group: the send would reach no one (a member joining
        # meanwhile reads the stored state), so skip it and its hop to a loop. A dict
        # look-up, safe from any thread under the GIL. Other layers can't tell cheaply.
        if in_memory and not layer.groups.get(group):
            return
        message = event_for(snapshot, group)
        # The in-memory layer runs on its listeners' loop; any other on the transport's.
        loop = self.server_loop if in_memory else None
        self._submit(
            loop or self._private_loop(), lambda: layer_call(layer.group_send, group, message)
        )

    def _submit(
        self, loop: asyncio.AbstractEventLoop, coro_factory: Callable[[], Coroutine[Any, Any, Any]]
    ) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(coro_factory())
            task.add_done_callback(self._done)
            return
        # From another thread: queue it, and wake the loop only if no wake-up is pending,
        # so a burst of pushes (100 handlers at 10 Hz) costs the loop one wake-up, not one
        # each. No lock: with 100 threads a lock held across a GIL switch makes a convoy
        # that the loop, which drains the queue, waits behind. deque.append and the flag
        # are single steps under the GIL; the drain clears the flag before it takes, so an
        # item is always taken by the drain its pusher saw pending or by one it scheduled.
        queue = self._queued.get(loop)
        if queue is None:
            queue = self._queued.setdefault(loop, deque())
        queue.append(coro_factory)
        if self._waking.get(loop):
            return
        self._waking[loop] = True
        try:
            loop.call_soon_threadsafe(self._start_queued, loop)
        except RuntimeError:  # the loop closed: nobody is left to hear these events
            self._queued.pop(loop, None)
            self._waking.pop(loop, None)

    def _start_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``: start every push queued for it by other threads, in order."""
        self._waking[loop] = False
        queue = self._queued.get(loop)
        while queue:
            coro_factory = queue.popleft()
            loop.create_task(coro_factory()).add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any] | Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                logger.warning("Channel layer push failed (%d so far): %r", self.failures, exc)

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._own_loop is None or self._own_loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="async-actions-push", daemon=True
                )
                thread.start()
                self._own_loop = loop
            return self._own_loop


async def layer_call(call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Await ``call(*args)``, again after a failure, up to ``LAYER_TRIES`` times in all.

    After Redis restarts, every connection a pool opened before fails its next command
    once; a retried call gets a fresh one. Without it the event lost may be the final one.
    """
    for attempt in range(1, LAYER_TRIES + 1):
        try:
            return await call(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            if attempt == LAYER_TRIES:
                raise
    return None


#: The process's transport.
pusher = Pusher()


def attach_loop(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Name the server's loop (the running one by default) to the process's transport.

    Returns False, naming nothing, when no loop is given and none runs in this thread.
    The hub and ``async_actions.startup()`` call it; a consumer of your own that listens
    to action groups on the in-memory layer may call it from its ``connect``.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
    pusher.attach_loop(loop)
    return True


def push_action(action: Action) -> None:
    """Push the stored state of ``action`` (after a change made outside a publisher)."""
    pusher.push(action.pk, action.snapshot())
