"""The event loop that runs ``async def`` handlers: one per process, in its own thread.

A runner's worker thread hands the handler's coroutine to this loop and waits for the
result, so sync and async handlers share one pool and one set of limits. One long-lived
loop (not one per call) lets async handlers share clients and connection pools, and a
cancel reaches the coroutine as ``asyncio.CancelledError`` at its next ``await``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from async_actions.context import _current
from async_actions.exceptions import ActionCancelled, EscapedBaseException

if TYPE_CHECKING:
    from async_actions.context import ActionContext

__all__ = ["ActionLoop", "EscapedBaseException", "action_loop"]


class ActionLoop:
    """Owns the process's handler event loop, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, (re)started if it is not alive."""
        with self._lock:
            alive = (
                self._loop is not None
                and not self._loop.is_closed()
                and self._thread is not None
                and self._thread.is_alive()
            )
            if not alive:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(
                    target=self._run_forever,
                    args=(loop, started),
                    name="async-actions-loop",
                    daemon=True,
                )
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            assert self._loop is not None
            return self._loop

    @staticmethod
    def _run_forever(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()

    def run(self, ctx: ActionContext, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` on the loop for ``ctx``; block the calling thread until done.

        A cancel of ``ctx`` cancels the task; the handler sees ``CancelledError`` and,
        unless it swallows it, the action ends as cancelled (``ActionCancelled`` here).
        """
        future = asyncio.run_coroutine_threadsafe(self._guard(ctx, awaitable), self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:  # the loop itself cancelled the task
            raise ActionCancelled() from None

    @staticmethod
    async def _guard(ctx: ActionContext, awaitable: Awaitable[Any]) -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        token = _current.set(ctx)
        ctx._on_cancel(lambda: loop.call_soon_threadsafe(task.cancel))
        try:
            return await awaitable
        except asyncio.CancelledError as exc:
            if not ctx.cancelled:  # the handler raised it; nobody asked to cancel
                raise EscapedBaseException(exc) from None
            raise ActionCancelled() from None
        except Exception:
            raise
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit, ...
            raise EscapedBaseException(exc) from None
        finally:
            _current.reset(token)
            # Like Django after an async request: the thread that ran the handler's
            # sync_to_async calls does not keep a database connection open.
            await sync_to_async(close_old_connections)()

    def stop(self) -> None:
        """Stop the loop (tests); a later ``run`` starts a fresh one."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=5)


action_loop = ActionLoop()
