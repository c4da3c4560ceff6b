"""The transport: what a push from any thread promises, on the in-memory layer.

An event pushed reaches every channel in the action's group at the time of the push,
whether or not a WebSocket ever connected in the process (no loop named yet: it goes on
the transport's own loop); a subscriber that joins later gets nothing from it (layers
keep no history; it reads the stored state). Once the hub exists, its loop (the
server's) carries the in-memory layer's events.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from channels.layers import channel_layers, get_channel_layer

from async_actions import push
from async_actions.events import event_for, group_name
from async_actions.fanout import Subscriber, hub_for
from async_actions.layers import HUB_CHANNEL_PREFIX, InMemoryChannelLayer

TIMEOUT = 5.0


@pytest.fixture
def fresh(settings: Any) -> Iterator[push.Pusher]:
    """The in-memory layer, new, and the process's transport with no loop named."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "async_actions.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    saved = push.pusher._server_loop
    push.pusher._server_loop = None
    push.pusher.reset()
    yield push.pusher
    push.pusher._server_loop = saved
    channel_layers.backends.clear()
    push.pusher.reset()


def state(action_id: Any, seq: int) -> dict[str, Any]:
    return {"id": str(action_id), "seq": seq, "status": "running"}


def from_a_thread(action_id: Any, seq: int) -> None:
    worker = threading.Thread(target=push.pusher.push, args=(action_id, state(action_id, seq)))
    worker.start()
    worker.join(TIMEOUT)


async def queued(layer: InMemoryChannelLayer, channel: str) -> None:
    """Wait until ``channel`` holds a message (without a receiver waiting across threads)."""
    for _ in range(int(TIMEOUT / 0.01)):
        queue = layer.channels.get(channel)
        if queue is not None and not queue.empty():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing reached {channel}")


async def test_a_push_before_any_loop_is_named_reaches_the_group_members_of_that_time(
    fresh: push.Pusher,
) -> None:
    layer = get_channel_layer()
    assert isinstance(layer, InMemoryChannelLayer)
    assert fresh.server_loop is None
    action_id = uuid4()
    member = await layer.new_channel()
    await layer.group_add(group_name(action_id), member)

    await asyncio.to_thread(from_a_thread, action_id, 1)
    await queued(layer, member)
    message = await layer.receive(member)
    assert message == event_for(state(action_id, 1), group_name(action_id))

    late = await layer.new_channel()
    await layer.group_add(group_name(action_id), late)  # joins after the push
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(late), 0.2)
    assert fresh.server_loop is None  # pushing named no loop
    await layer.flush()


async def test_a_push_to_an_empty_in_memory_group_sends_nothing(fresh: push.Pusher) -> None:
    layer = get_channel_layer()
    assert isinstance(layer, InMemoryChannelLayer)
    sent: list[str] = []
    real_group_send = layer.group_send

    async def counted(group: str, message: dict[str, Any]) -> None:
        sent.append(group)
        await real_group_send(group, message)

    layer.group_send = counted
    nobody, somebody = uuid4(), uuid4()
    member = await layer.new_channel()
    await layer.group_add(group_name(somebody), member)

    await asyncio.to_thread(from_a_thread, nobody, 1)
    await asyncio.to_thread(from_a_thread, somebody, 1)  # after it on the same loop
    await queued(layer, member)
    assert await layer.receive(member) == event_for(state(somebody, 1), group_name(somebody))
    assert sent == [group_name(somebody)]
    await layer.group_discard(group_name(somebody), member)
    await asyncio.to_thread(from_a_thread, somebody, 2)  # its last member left
    await asyncio.to_thread(from_a_thread, nobody, 2)
    third = uuid4()
    await layer.group_add(group_name(third), member)
    await asyncio.to_thread(from_a_thread, third, 1)
    await queued(layer, member)
    assert await layer.receive(member) == event_for(state(third, 1), group_name(third))
    assert sent == [group_name(somebody), group_name(third)]
    await layer.flush()


async def test_the_hub_names_its_loop_and_gets_pushes_from_threads_there(
    fresh: push.Pusher,
) -> None:
    layer = get_channel_layer()
    hub = hub_for(layer)
    assert fresh.server_loop is asyncio.get_running_loop()  # named before any group is joined
    action_id = uuid4()
    frames: asyncio.Queue[str] = asyncio.Queue()

    async def send(text: str) -> None:
        frames.put_nowait(text)

    subscriber = Subscriber(send)
    await hub.subscribe(group_name(action_id), subscriber)
    subscriber.ready = True
    await asyncio.to_thread(from_a_thread, action_id, 3)
    frame = await asyncio.wait_for(frames.get(), TIMEOUT)
    assert frame == event_for(state(action_id, 3))["text"]
    await hub.unsubscribe(group_name(action_id), subscriber)
    await layer.flush()


async def test_attach_loop_names_the_running_loop_by_default(fresh: push.Pusher) -> None:
    push.attach_loop()
    assert fresh.server_loop is asyncio.get_running_loop()


def test_a_closed_loop_counts_as_none(fresh: push.Pusher) -> None:
    loop = asyncio.new_event_loop()
    push.attach_loop(loop)
    assert fresh.server_loop is loop
    loop.close()
    assert fresh.server_loop is None


def test_no_layer_configured_means_no_push(fresh: push.Pusher, settings: Any) -> None:
    settings.ASYNC_ACTIONS = {**getattr(settings, "ASYNC_ACTIONS", {}), "CHANNEL_LAYER": None}
    fresh.reset()
    assert fresh.layer() is None
    fresh.push(uuid4(), state(uuid4(), 1))  # nothing to do, no error


def test_attach_loop_outside_a_loop_names_nothing(fresh: push.Pusher) -> None:
    assert push.attach_loop() is False
    assert fresh.server_loop is None


async def test_a_burst_of_pushes_from_threads_arrives_whole_and_in_order_per_thread(
    fresh: push.Pusher,
) -> None:
    """Pushes from other threads are queued and started by one wake-up of the server's
    loop per burst: none may be lost or reordered on the way (the hub keeps the newest
    by ``seq``, but a listener of the user's sees every event)."""
    loop = asyncio.get_running_loop()
    push.attach_loop(loop)
    layer = get_channel_layer()
    ids = [uuid4() for _ in range(4)]
    member = await layer.new_channel(prefix=HUB_CHANNEL_PREFIX)  # room for the whole burst
    for action_id in ids:
        await layer.group_add(group_name(action_id), member)
    per_thread = 150
    failures = fresh.failures  # counted since the process started (earlier tests too)

    def burst(action_id: Any) -> None:
        for seq in range(1, per_thread + 1):
            push.pusher.push(action_id, state(action_id, seq))

    threads = [threading.Thread(target=burst, args=(action_id,)) for action_id in ids]
    for thread in threads:
        thread.start()
    received: dict[str, list[int]] = {action_id.hex: [] for action_id in ids}
    for _ in range(per_thread * len(ids)):
        message = await asyncio.wait_for(layer.receive(member), TIMEOUT)
        received[message["group"].rsplit(".", 1)[1]].append(message["seq"])
    await asyncio.to_thread(lambda: [thread.join(TIMEOUT) for thread in threads])
    assert received == {action_id.hex: list(range(1, per_thread + 1)) for action_id in ids}
    assert fresh.failures == failures
    assert not any(fresh._queued.values())  # nothing left waiting for a wake-up


async def test_a_group_send_reaches_each_member_with_its_own_copy_and_skips_a_full_one() -> None:
    """The layer puts a group message on each member's queue in turn (no task per
    member): a full member misses it, the others still get it, in order, each a copy."""
    layer = InMemoryChannelLayer(capacity=2)
    full, first, second = [await layer.new_channel() for _ in range(3)]
    for channel in (full, first, second):
        await layer.group_add("g", channel)
    await layer.send(full, {"type": "x", "n": -1})
    await layer.send(full, {"type": "x", "n": 0})  # ``full`` is at capacity now
    message = {"type": "x", "n": 1, "data": {"deep": [1]}}
    await layer.group_send("g", message)
    await layer.group_send("g", {"type": "x", "n": 2})
    got = [await layer.receive(first), await layer.receive(first)]
    assert [m["n"] for m in got] == [1, 2]
    copy = await layer.receive(second)
    assert copy == message and copy is not message and copy["data"] is not got[0]["data"]
    assert [(await layer.receive(full))["n"] for _ in range(2)] == [-1, 0]
    await layer.group_send("empty", {"type": "x"})  # no members: nothing happens
