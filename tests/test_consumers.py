"""ActionConsumer through the project's real ASGI application and in-memory layer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore

from async_actions import consumers, service
from async_actions.models import Action
from async_actions.progress import event_for, group_name
from example_project.asgi import application
from tests.actions import gate
from tests.views import GateView, StepsView

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10


@pytest.fixture(autouse=True)
async def fresh_layer() -> AsyncIterator[None]:
    layer = get_channel_layer()
    await layer.flush()
    yield
    await layer.flush()


@sync_to_async
def new_session(user: Any = None) -> str:
    store = SessionStore()
    if user is not None:
        store["_auth_user_id"] = str(user.pk)
        store["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        store["_auth_user_hash"] = user.get_session_auth_hash()
    store.save()
    return store.session_key


def communicator(action_id: Any, session_key: str | None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if session_key:
        headers.append((b"cookie", f"sessionid={session_key}".encode()))
    return WebsocketCommunicator(application, f"/ws/async-actions/{action_id}/", headers=headers)


@sync_to_async
def make_action(session_key: str = "", **fields: Any) -> Action:
    fields.setdefault("handler", GateView.handler_name())
    return Action.objects.create(session_key=session_key, **fields)


async def start_view(view: Any, data: dict, session_key: str) -> Action:
    result = await sync_to_async(service.start)(view.handler_name(), data, session_key=session_key)
    assert result.ok
    return result.action


async def wait_status(pk: Any, status: str) -> None:
    async def poll() -> None:
        while not await Action.objects.filter(pk=pk, status=status).aexists():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


async def test_a_visitor_who_does_not_own_the_action_is_closed_with_4404() -> None:
    owner, stranger = await new_session(), await new_session()
    action = await make_action(owner)
    ws = communicator(action.pk, stranger)
    connected, _ = await ws.connect(TIMEOUT)
    assert connected
    assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4404}


async def test_a_visitor_without_a_session_is_closed_with_4404() -> None:
    action = await make_action(await new_session())
    ws = communicator(action.pk, None)
    await ws.connect(TIMEOUT)
    assert (await ws.receive_output(TIMEOUT))["code"] == 4404


async def test_the_owner_first_receives_the_database_snapshot() -> None:
    session = await new_session()
    action = await make_action(session, status="running", percent=42, message="half", seq=7)
    ws = communicator(action.pk, session)
    assert (await ws.connect(TIMEOUT))[0]
    frame = await ws.receive_json_from(TIMEOUT)
    assert frame["type"] == "update"
    assert frame["action"]["seq"] == 7
    assert frame["action"]["percent"] == 42
    assert frame["action"]["message"] == "half"
    await ws.disconnect()


async def test_staff_may_watch_any_action() -> None:
    staff = await sync_to_async(get_user_model().objects.create_user)(
        "boss", password="pw", is_staff=True
    )
    action = await make_action(await new_session(), status="running", seq=3)
    ws = communicator(action.pk, await new_session(staff))
    await ws.connect(TIMEOUT)
    assert (await ws.receive_json_from(TIMEOUT))["action"]["seq"] == 3
    await ws.disconnect()


async def test_a_user_may_not_watch_another_users_action() -> None:
    alice = await sync_to_async(get_user_model().objects.create_user)("alice", password="pw")
    bob = await sync_to_async(get_user_model().objects.create_user)("bob", password="pw")
    action = await make_action(user=alice)
    ws = communicator(action.pk, await new_session(bob))
    await ws.connect(TIMEOUT)
    assert (await ws.receive_output(TIMEOUT))["code"] == 4404


def _race(monkeypatch: Any, action: Action, *, db_also_advances: bool) -> None:
    """Publish seq+1 after the consumer joined the group but before it reads the row."""
    original = consumers.ActionConsumer._snapshot

    async def snapshot_after_a_racing_event(self: Any) -> Any:
        racing = {**action.snapshot(), "seq": action.seq + 1, "message": "racing"}
        await get_channel_layer().group_send(group_name(action.pk), event_for(racing))
        if db_also_advances:
            await Action.objects.filter(pk=action.pk).aupdate(seq=action.seq + 1, message="racing")
        return await original(self)

    monkeypatch.setattr(consumers.ActionConsumer, "_snapshot", snapshot_after_a_racing_event)


async def test_an_event_published_between_join_and_snapshot_is_not_lost(monkeypatch: Any) -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=10, message="stored")
    _race(monkeypatch, action, db_also_advances=False)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    first = (await ws.receive_json_from(TIMEOUT))["action"]
    second = (await ws.receive_json_from(TIMEOUT))["action"]
    assert (first["seq"], first["message"]) == (10, "stored")
    assert (second["seq"], second["message"]) == (11, "racing")
    await ws.disconnect()


async def test_an_event_already_in_the_snapshot_is_not_sent_twice(monkeypatch: Any) -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=10)
    _race(monkeypatch, action, db_also_advances=True)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    assert (await ws.receive_json_from(TIMEOUT))["action"]["seq"] == 11
    later = {**action.snapshot(), "seq": 12}
    await get_channel_layer().group_send(group_name(action.pk), event_for(later))
    assert (await ws.receive_json_from(TIMEOUT))["action"]["seq"] == 12
    await ws.disconnect()


async def test_stale_events_are_dropped_but_the_final_event_always_arrives() -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=20)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    await ws.receive_json_from(TIMEOUT)
    layer, group = get_channel_layer(), group_name(action.pk)
    await layer.group_send(group, event_for({**action.snapshot(), "seq": 15}))
    await layer.group_send(group, event_for({**action.snapshot(), "seq": 20}))
    final = {**action.snapshot(), "seq": 20, "status": "succeeded"}
    await layer.group_send(group, event_for(final))
    assert (await ws.receive_json_from(TIMEOUT))["action"]["status"] == "succeeded"
    assert await ws.receive_nothing(0.1)
    await ws.disconnect()


async def test_progress_from_a_worker_thread_arrives_in_seq_order_ending_with_success(
    runner: Any,
) -> None:
    session = await new_session()
    gate("consumer-steps").clear()
    action = await start_view(StepsView, {"gate": "consumer-steps", "steps": 200}, session)
    await wait_status(action.pk, "running")
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    frames = [(await ws.receive_json_from(TIMEOUT))["action"]]
    gate("consumer-steps").set()
    while frames[-1]["status"] not in ("succeeded", "failed", "cancelled"):
        frames.append((await ws.receive_json_from(TIMEOUT))["action"])
    seqs = [frame["seq"] for frame in frames]
    assert seqs == sorted(set(seqs)), seqs
    assert frames[-1]["status"] == "succeeded"
    assert frames[-1]["percent"] == 100
    assert len(frames) >= 2  # the snapshot and at least the final push
    await ws.disconnect()


async def test_the_owner_can_cancel_over_the_socket(runner: Any) -> None:
    session = await new_session()
    gate("consumer-cancel").clear()
    action = await start_view(GateView, {"gate": "consumer-cancel"}, session)
    await wait_status(action.pk, "running")
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    await ws.receive_json_from(TIMEOUT)
    await ws.send_json_to({"type": "cancel"})
    statuses = []
    while "cancelled" not in statuses:
        frame = await ws.receive_json_from(TIMEOUT)
        statuses.append(frame["status"] if frame["type"] == "cancel" else frame["action"]["status"])
    assert "ok" in statuses
    await wait_status(action.pk, "cancelled")
    await ws.disconnect()


async def test_garbage_frames_are_ignored() -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=1)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    await ws.receive_json_from(TIMEOUT)
    for junk in ("not json", "[1, 2]", '{"type": "explode"}', "null", '{"type": 5}'):
        await ws.send_to(text_data=junk)
    await ws.send_to(bytes_data=b"\x00\xff")
    assert await ws.receive_nothing(0.2)
    await ws.send_to(text_data=json.dumps({"type": "cancel"}))
    assert await ws.receive_json_from(TIMEOUT) == {"type": "cancel", "status": "ok"}
    await ws.disconnect()


async def test_an_oversize_frame_closes_the_socket_with_4413_and_the_server_stays_up() -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=1)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    await ws.receive_json_from(TIMEOUT)
    await ws.send_to(text_data="[" * 100_000)
    assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4413}
    again = communicator(action.pk, session)
    connected, _ = await again.connect(TIMEOUT)
    assert connected
    assert (await again.receive_json_from(TIMEOUT))["action"]["id"] == str(action.pk)
    await again.disconnect()


async def test_deeply_nested_small_frame_is_ignored() -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=1)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    await ws.receive_json_from(TIMEOUT)
    await ws.send_to(text_data="[" * 4000)
    assert await ws.receive_nothing(0.2)
    await ws.disconnect()


async def test_a_dead_channel_layer_closes_with_4503_so_the_page_polls(
    settings: Any,
) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # Nothing listens on port 1: the layer fails like Redis being down.
            "CONFIG": {"hosts": [("127.0.0.1", 1)]},
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    try:
        session = await new_session()
        action = await make_action(session, status="running", seq=1)
        ws = communicator(action.pk, session)
        await ws.connect(TIMEOUT)
        assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4503}
    finally:
        channel_layers.backends.clear()
