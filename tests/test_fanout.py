"""The per-process hub: one group membership per action, newest state first for slow tabs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.layers import get_channel_layer

from async_actions.fanout import Hub, Subscriber
from async_actions.layers import InMemoryChannelLayer
from async_actions.progress import event_for, group_name
from tests.helpers import TIMEOUT, communicator, make_action, new_session

ACTION_ID = "6f1c1f0e-8d8e-4a49-9a55-0d1b9c3e7a01"


def snapshot(seq: int, status: str = "running") -> dict[str, Any]:
    return {"id": ACTION_ID, "status": status, "seq": seq, "percent": seq % 100}


@pytest.mark.django_db(transaction=True)
async def test_many_tabs_on_one_action_make_one_group_membership_per_process() -> None:
    layer = get_channel_layer()
    await layer.flush()
    session = await new_session()
    action = await make_action(session, status="running", seq=1)
    group = group_name(action.pk)
    tabs = [communicator(action.pk, session) for _ in range(5)]
    for tab in tabs:
        await tab.connect(TIMEOUT)
        assert (await tab.receive_json_from(TIMEOUT))["action"]["seq"] == 1
    assert len(layer.groups[group]) == 1

    await layer.group_send(group, event_for({**action.snapshot(), "seq": 2}))
    for tab in tabs:
        assert (await tab.receive_json_from(TIMEOUT))["action"]["seq"] == 2

    for tab in tabs[:-1]:
        await tab.disconnect()
    assert len(layer.groups[group]) == 1  # one tab still watches
    await tabs[-1].disconnect()
    assert group not in layer.groups
    await layer.flush()


async def test_a_slow_tab_skips_stale_progress_but_gets_the_newest_and_the_final_state() -> None:
    layer = InMemoryChannelLayer()
    hub = Hub(layer)
    frames: list[dict[str, Any]] = []

    async def slow_send(text: str) -> None:
        frames.append(json.loads(text)["action"])
        await asyncio.sleep(0.05)  # a tab on a slow link

    tab = Subscriber(slow_send)
    group = group_name(ACTION_ID)
    await hub.subscribe(group, tab)
    hub.mark_ready(tab)
    for seq in range(1, 201):
        await layer.group_send(group, event_for(snapshot(seq)))
        await asyncio.sleep(0.001)

    async def arrived(status: str) -> None:
        while not frames or (frames[-1]["seq"], frames[-1]["status"]) != (200, status):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(arrived("running"), TIMEOUT)  # the newest was not skipped
    seqs = [frame["seq"] for frame in frames]
    assert seqs == sorted(set(seqs))
    assert len(frames) < 60 and tab.skipped > 100, (len(frames), tab.skipped)
    await layer.group_send(group, event_for(snapshot(200, "succeeded")))
    await asyncio.wait_for(arrived("succeeded"), TIMEOUT)  # same seq, but final
    await hub.unsubscribe(group, tab)


async def test_events_before_the_snapshot_wait_and_only_newer_ones_are_written() -> None:
    layer = InMemoryChannelLayer()
    hub = Hub(layer)
    written: list[int] = []

    async def send(text: str) -> None:
        written.append(json.loads(text)["action"]["seq"])

    tab = Subscriber(send)
    group = group_name(ACTION_ID)
    await hub.subscribe(group, tab)
    await layer.group_send(group, event_for(snapshot(5)))
    await asyncio.sleep(0.05)
    assert written == []  # not ready: the consumer has not sent its snapshot yet
    tab.last_seq = 5  # the snapshot already had seq 5
    hub.mark_ready(tab)
    await asyncio.sleep(0.05)
    assert written == []
    await layer.group_send(group, event_for(snapshot(6)))
    await asyncio.sleep(0.05)
    assert written == [6]
    await hub.unsubscribe(group, tab)


async def test_a_layer_that_cannot_join_leaves_no_subscription_behind() -> None:
    class BrokenLayer(InMemoryChannelLayer):
        async def group_add(self, group: str, channel: str) -> None:
            raise ConnectionError("the layer is down")

    hub = Hub(BrokenLayer())
    tab = Subscriber(lambda text: asyncio.sleep(0))
    with pytest.raises(ConnectionError):
        await hub.subscribe(group_name(ACTION_ID), tab)
    assert hub._subscribers == {} and hub._joined == {}


async def test_every_tab_is_written_the_one_frame_the_hub_made_for_the_event() -> None:
    """Serialised once per event and wrapped once per process: each tab's write is the
    same ASGI message, whose text is the event's, in ``seq`` order, with the final state."""
    layer = InMemoryChannelLayer()
    hub = Hub(layer)
    written: list[list[dict[str, Any]]] = [[] for _ in range(5)]

    def tab(frames: list[dict[str, Any]]) -> Subscriber:
        async def send_frame(frame: dict[str, Any]) -> None:
            frames.append(frame)

        async def send(text: str) -> None:  # pragma: no cover - send_frame is given
            raise AssertionError("the text path is for subscribers without send_frame")

        return Subscriber(send, send_frame=send_frame)

    group = group_name(ACTION_ID)
    tabs = [tab(frames) for frames in written]
    for subscriber in tabs:
        await hub.subscribe(group, subscriber)
        hub.mark_ready(subscriber)
    for seq in (1, 2, 3):
        await layer.group_send(group, event_for(snapshot(seq)))
        await asyncio.sleep(0.05)
    await layer.group_send(group, event_for(snapshot(4, "succeeded")))
    for _ in range(100):
        if all(frames and '"succeeded"' in frames[-1]["text"] for frames in written):
            break
        await asyncio.sleep(0.01)
    for frames in written:
        assert [json.loads(f["text"])["action"]["seq"] for f in frames] == [1, 2, 3, 4]
        assert all(f["type"] == "websocket.send" for f in frames)
    for index in range(4):  # one object per event, shared by the five tabs
        assert len({id(frames[index]) for frames in written}) == 1
    for subscriber in tabs:
        await hub.unsubscribe(group, subscriber)
