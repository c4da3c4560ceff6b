"""ActionConsumer through the project's real ASGI application and in-memory layer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from async_actions import consumers, service
from async_actions.fairness import Owner
from async_actions.models import Action
from async_actions.progress import event_for, group_name
from tests.actions import gate
from tests.helpers import TIMEOUT, communicator, make_action, new_session
from tests.views import GateView, StepsView

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def fresh_layer() -> AsyncIterator[None]:
    layer = get_channel_layer()
    await layer.flush()
    yield
    await layer.flush()


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


async def test_view_permission_may_watch_any_action() -> None:
    staff = await sync_to_async(get_user_model().objects.create_user)(
        "boss", password="pw", is_staff=True
    )
    await staff.user_permissions.aadd(
        await Permission.objects.aget(
            content_type__app_label="async_actions", codename="view_action"
        )
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
    replies, states = [], []
    # The reply and the cancelled state travel apart (the state through the hub), so
    # either may come first: wait for both.
    while not replies or "cancelled" not in states:
        frame = await ws.receive_json_from(TIMEOUT)
        if frame["type"] == "cancel":
            replies.append(frame["status"])
        else:
            states.append(frame["action"]["status"])
    assert replies == ["ok"]
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


# -- authorization comes first -------------------------------------------------------------

#: Every kind of frame a client can send: commands, unknown ones, garbage, binary, oversize.
FRAMES: list[dict[str, Any]] = [
    {"text_data": '{"type": "cancel"}'},
    {"bytes_data": b'{"type": "cancel"}'},
    {"text_data": '{"type": "explode"}'},
    {"text_data": "not json"},
    {"bytes_data": b"\x00\xff"},
    {"text_data": "x" * 5000},
    {"bytes_data": b"x" * 5000},
]


async def stranger_session(kind: str) -> str | None:
    if kind == "no session":
        return None
    if kind == "another session":
        return await new_session()
    user = await sync_to_async(get_user_model().objects.create_user)("mallory", password="pw")
    return await new_session(user)


async def assert_inert(ws: WebsocketCommunicator, frame: dict[str, Any], code: int) -> None:
    """``frame`` sent before and after the handshake; only ``code`` comes back."""
    await ws.send_input({"type": "websocket.connect"})
    await ws.send_to(**frame)  # queued while the consumer decides
    assert await ws.receive_output(TIMEOUT) == {"type": "websocket.accept", "subprotocol": None}
    await ws.send_to(**frame)
    await ws.send_to(text_data='{"type": "cancel"}')
    assert await ws.receive_output(TIMEOUT) == {"type": "websocket.close", "code": code}
    assert await ws.receive_nothing(0.1)
    await ws.disconnect()


async def assert_untouched(action: Action) -> None:
    await action.arefresh_from_db()
    assert (action.status, action.cancel_requested, action.seq) == ("pending", False, 0)


@pytest.mark.parametrize("frame", FRAMES, ids=lambda frame: repr(frame)[:30])
@pytest.mark.parametrize("stranger", ["no session", "another session", "another user"])
async def test_no_frame_of_a_visitor_who_may_not_see_the_action_is_acted_on(
    stranger: str, frame: dict[str, Any]
) -> None:
    """Fails on df31ab2: a cancel sent on the refused socket cancelled the action."""
    action = await make_action(await new_session())
    await assert_inert(communicator(action.pk, await stranger_session(stranger)), frame, 4404)
    await assert_untouched(action)


@pytest.mark.parametrize("frame", FRAMES[:3], ids=lambda frame: repr(frame)[:30])
async def test_no_frame_of_a_socket_over_the_cap_is_acted_on(
    settings: Any, frame: dict[str, Any]
) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_SOCKETS_PER_OWNER_ACTION": 1}
    session = await new_session()
    action = await make_action(session)
    first = communicator(action.pk, session)
    assert (await first.connect(TIMEOUT))[0]
    await first.receive_json_from(TIMEOUT)
    await assert_inert(communicator(action.pk, session), frame, 4429)
    await assert_untouched(action)
    await first.disconnect()


async def test_no_frame_of_a_socket_closed_for_a_dead_layer_is_acted_on(settings: Any) -> None:
    """Fails on df31ab2: the owner's socket closed with 4503 still ran a cancel after it."""
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "CHANNEL_LAYER": "missing"}
    session = await new_session()
    action = await make_action(session)
    await assert_inert(communicator(action.pk, session), FRAMES[0], 4503)
    await assert_untouched(action)


async def test_the_owners_cancel_sent_before_the_snapshot_is_honoured() -> None:
    session = await new_session()
    action = await make_action(session)
    ws = communicator(action.pk, session)
    await ws.send_input({"type": "websocket.connect"})
    await ws.send_to(text_data='{"type": "cancel"}')
    assert (await ws.receive_output(TIMEOUT))["type"] == "websocket.accept"
    assert (await ws.receive_json_from(TIMEOUT))["action"]["status"] == "pending"
    await wait_status(action.pk, "cancelled")
    await ws.disconnect()


async def test_cancel_asks_may_control_not_only_whether_the_action_is_visible(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(consumers.ActionConsumer, "_may_control", lambda self, pk: False)
    session = await new_session()
    action = await make_action(session)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    await ws.receive_json_from(TIMEOUT)
    await ws.send_json_to({"type": "cancel"})
    assert await ws.receive_json_from(TIMEOUT) == {"type": "cancel", "status": "forbidden"}
    await assert_untouched(action)
    await ws.disconnect()


# -- sockets per owner and action ------------------------------------------------------------


async def open_socket(action: Action, session: str) -> tuple[WebsocketCommunicator, int | None]:
    """A socket and None once it got its snapshot, or the code it was closed with."""
    ws = communicator(action.pk, session)
    assert (await ws.connect(TIMEOUT))[0]
    output = await ws.receive_output(TIMEOUT)
    return ws, (output["code"] if output["type"] == "websocket.close" else None)


async def test_sockets_are_capped_per_owner_and_action(settings: Any) -> None:
    """Fails on df31ab2: there was no cap."""
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_SOCKETS_PER_OWNER_ACTION": 2}
    user = await sync_to_async(get_user_model().objects.create_user)("tabs", password="pw")
    action, elsewhere = await make_action(user=user), await make_action(user=user)
    # A logged-in owner is one owner across sessions (browsers, devices).
    tabs = [await open_socket(action, await new_session(user)) for _ in range(3)]
    assert [code for _, code in tabs] == [None, None, 4429]
    assert (await open_socket(elsewhere, await new_session(user)))[1] is None  # another action
    boss = await sync_to_async(get_user_model().objects.create_superuser)("boss", password="pw")
    assert (await open_socket(action, await new_session(boss)))[1] is None  # another owner
    await tabs[0][0].disconnect()  # a closed tab frees its place
    again, code = await open_socket(action, await new_session(user))
    assert code is None
    assert consumers._open_sockets[(Owner("user", user.pk), action.pk)] == 2
    for ws, _ in tabs[1:]:
        await ws.disconnect()
    await again.disconnect()
    assert (f"user:{user.pk}", action.pk) not in consumers._open_sockets


async def test_anonymous_sockets_are_capped_per_session(settings: Any) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_SOCKETS_PER_OWNER_ACTION": 1}
    session = await new_session()
    action = await make_action(session)
    first, code = await open_socket(action, session)
    assert code is None
    over, code = await open_socket(action, session)
    assert code == 4429
    await over.disconnect()
    await first.disconnect()
    again, code = await open_socket(action, session)
    assert code is None
    await again.disconnect()
    assert not [key for key in consumers._open_sockets if key[1] == action.pk]


async def test_no_cap_when_the_setting_is_none(settings: Any) -> None:
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_SOCKETS_PER_OWNER_ACTION": None}
    session = await new_session()
    action = await make_action(session)
    tabs = [await open_socket(action, session) for _ in range(25)]
    assert [code for _, code in tabs] == [None] * 25
    for ws, _ in tabs:
        await ws.disconnect()


async def test_sockets_are_capped_per_owner_across_actions(settings: Any) -> None:
    """Before, only the per-action cap held: an owner with many (finished) actions could
    hold ``MAX_SOCKETS_PER_OWNER_ACTION`` sockets to each of them."""
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_SOCKETS_PER_OWNER": 3}
    session, other = await new_session(), await new_session()
    actions = [await make_action(session, status="succeeded") for _ in range(5)]
    tabs = [await open_socket(action, session) for action in actions]
    assert [code for _, code in tabs] == [None, None, None, 4429, 4429]
    # another owner is not affected
    theirs, code = await open_socket(await make_action(other), other)
    assert code is None
    await tabs[0][0].disconnect()  # a closed tab frees its place
    again, code = await open_socket(actions[4], session)
    assert code is None
    for ws, _ in [*tabs[1:], (again, None), (theirs, None)]:
        await ws.disconnect()
    assert not consumers._owner_sockets


@pytest.mark.parametrize("name", ["MAX_SOCKETS_PER_OWNER_ACTION", "MAX_SOCKETS_PER_OWNER"])
@pytest.mark.parametrize("value", [0, -1, "20", True, 2.5])
def test_a_bad_socket_cap_fails_the_system_check(settings: Any, name: str, value: Any) -> None:
    from async_actions.checks import check_settings

    settings.ASYNC_ACTIONS = {name: value}
    assert [m.id for m in check_settings()] == ["async_actions.E030"]


# -- close codes -------------------------------------------------------------------------------


def test_every_close_code_is_an_application_code_documented_with_the_websocket() -> None:
    views_doc = (Path(__file__).resolve().parent.parent / "docs" / "views.md").read_text()
    for code in consumers.CloseCode:
        assert 4000 <= code <= 4999, code  # what daphne lets an application send
        assert f"| {int(code)} | `{code.name}` |" in views_doc, code


# -- a flood of frames ---------------------------------------------------------------------


@pytest.mark.parametrize("status, answer", [("pending", "ok"), ("succeeded", "action_completed")])
async def test_a_flood_of_cancel_frames_asks_the_database_once(
    monkeypatch: Any, status: str, answer: str
) -> None:
    """Before, each cancel frame cost two queries: 20,000 frames from one socket kept a
    daphne busy for minutes (about 100 a second) and slowed every other visitor."""
    calls = {"cancel": 0, "may_control": 0}
    real_cancel, real_may_control = service.cancel, consumers.ActionConsumer._may_control

    def counting_cancel(pk: Any) -> Any:
        calls["cancel"] += 1
        return real_cancel(pk)

    def counting_may_control(self: Any, pk: Any) -> bool:
        calls["may_control"] += 1
        return real_may_control(self, pk)

    monkeypatch.setattr(service, "cancel", counting_cancel)
    monkeypatch.setattr(consumers.ActionConsumer, "_may_control", counting_may_control)
    session = await new_session()
    action = await make_action(session, status=status)
    ws = communicator(action.pk, session)
    await ws.connect(TIMEOUT)
    await ws.receive_json_from(TIMEOUT)
    for _ in range(300):
        await ws.send_to(text_data='{"type": "cancel"}')
    answers = []
    while len(answers) < 300:
        frame = await ws.receive_json_from(TIMEOUT)
        if frame["type"] == "cancel":
            answers.append(frame["status"])
    assert set(answers) == {answer}
    assert calls == {"cancel": 1, "may_control": 1}
    await ws.disconnect()


async def open_socket_from(
    action: Action, session: str, address: str
) -> tuple[WebsocketCommunicator, int | None]:
    """:func:`open_socket` from a client at ``address`` (as daphne sets ``client``)."""
    ws = communicator(action.pk, session)
    ws.scope["client"] = (address, 40000)
    assert (await ws.connect(TIMEOUT))[0]
    output = await ws.receive_output(TIMEOUT)
    return ws, (output["code"] if output["type"] == "websocket.close" else None)


async def test_anonymous_sockets_are_capped_per_address_across_sessions(settings: Any) -> None:
    """An anonymous client mints a session per cookie it drops: the caps counted per
    session let one address hold MAX_SOCKETS_PER_OWNER sockets per session it made,
    without bound. They count by address, as the anonymous start limit does."""
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "MAX_SOCKETS_PER_OWNER": 2}
    sessions = [await new_session() for _ in range(3)]
    actions = [await make_action(session) for session in sessions]
    tabs = [
        await open_socket_from(action, session, "203.0.113.7")
        for action, session in zip(actions, sessions, strict=True)
    ]
    assert [code for _, code in tabs] == [None, None, 4429]
    # another address is another owner
    other, code = await open_socket_from(actions[2], sessions[2], "198.51.100.9")
    assert code is None
    for ws, _ in [*tabs, (other, None)]:
        await ws.disconnect()
    assert not consumers._owner_sockets
