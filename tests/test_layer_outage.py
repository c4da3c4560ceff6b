"""Redis stopped, restarted or emptied under open tabs: watching recovers, or the page polls.

Each test runs its own ``redis-server`` on a free loopback port and stops and starts it.
While Redis is down, every watching tab is closed with 4503 (the page polls the status
JSON) and a new tab gets 4503 too. When Redis is back, or comes back empty without the
hub seeing an error (``FLUSHALL`` stands for a restart between two receives), the hub
joins every group again, each tab gets the stored state, then live updates again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator

from async_actions.fanout import Hub, Subscriber, hub_for
from async_actions.models import Action
from async_actions.progress import event_for, group_name, layer_call, pusher
from tests.helpers import communicator, make_action, need, new_session
from tests.servers import free_port

TIMEOUT = 10
#: Seconds between the hub's probes in these tests (the default is 5).
CHECK_INTERVAL = 0.2


class RedisServer:
    """A private ``redis-server`` without persistence: a restart loses every key."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client().ping()  # the client retries until the server listens

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=TIMEOUT)
            self.process = None

    def client(self) -> Any:
        import redis
        from redis.backoff import ConstantBackoff
        from redis.retry import Retry

        return redis.Redis(
            port=self.port,
            retry=Retry(ConstantBackoff(0.05), 100),
            retry_on_error=[redis.ConnectionError],
        )


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def layer_on(redis_server: RedisServer, settings: Any) -> Iterator[RedisServer]:
    """The default channel layer is the private Redis; the hub probes every 0.2 s."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [("127.0.0.1", redis_server.port)], "prefix": "aa-outage"},
        }
    }
    settings.ASYNC_ACTIONS = {
        **getattr(settings, "ASYNC_ACTIONS", {}),
        "LAYER_CHECK_INTERVAL": CHECK_INTERVAL,
    }
    channel_layers.backends.clear()
    pusher.reset()
    yield redis_server
    channel_layers.backends.clear()
    pusher.reset()


@pytest.fixture
async def closing_pools() -> AsyncIterator[list[Any]]:
    """Layers appended here have their connections closed before the loop ends."""
    layers: list[Any] = []
    yield layers
    for layer in layers:
        with contextlib.suppress(Exception):  # Redis may be stopped: nothing to close
            await layer.close_pools()


class Tab:
    """A hub subscriber that records what it is sent and whether it was dropped."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.frames: list[dict[str, Any]] = []
        self.lost = asyncio.Event()
        self.subscriber = Subscriber(self._send, refresh=self._refresh, on_lost=self._lost)

    async def _send(self, text: str) -> None:
        self.frames.append(json.loads(text)["action"])

    async def _refresh(self) -> dict[str, Any]:
        return dict(self.state)  # what the database holds

    async def _lost(self) -> None:
        self.lost.set()

    async def seen(self, seq: int) -> None:
        async def arrived() -> None:
            while not any(frame["seq"] == seq for frame in self.frames):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(arrived(), TIMEOUT)


def running(seq: int, action_id: str) -> dict[str, Any]:
    return {"id": action_id, "status": "running", "seq": seq, "percent": seq}


def redis_layer(server: RedisServer) -> Any:
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[("127.0.0.1", server.port)], prefix=uuid.uuid4().hex)


async def test_a_hub_rejoins_and_refreshes_after_redis_comes_back_empty(
    layer_on: RedisServer, closing_pools: list[Any]
) -> None:
    action_id = str(uuid.uuid4())
    group = group_name(action_id)
    layer = redis_layer(layer_on)
    closing_pools.append(layer)
    hub = Hub(layer)
    tab = Tab(running(1, action_id))
    await hub.subscribe(group, tab.subscriber)
    hub.mark_ready(tab.subscriber)
    await layer_call(layer.group_send, group, event_for(running(2, action_id)))
    await tab.seen(2)

    # Every key gone, connections untouched: the hub sees no error, only a silent loss.
    await asyncio.to_thread(layer_on.client().flushall)
    tab.state = running(3, action_id)
    await layer_call(layer.group_send, group, event_for(running(3, action_id)))  # reaches nobody
    await tab.seen(3)  # from the database, once the probe found the memberships gone
    assert hub.rejoins >= 1
    await layer_call(layer.group_send, group, event_for(running(4, action_id)))
    await tab.seen(4)  # live again
    assert not tab.lost.is_set()
    await hub.unsubscribe(group, tab.subscriber)


async def test_a_hub_drops_its_tabs_while_redis_is_down_and_serves_new_ones_after(
    layer_on: RedisServer, closing_pools: list[Any]
) -> None:
    action_id = str(uuid.uuid4())
    group = group_name(action_id)
    layer = redis_layer(layer_on)
    closing_pools.append(layer)
    hub = Hub(layer)
    tabs = [Tab(running(1, action_id)) for _ in range(3)]
    for tab in tabs:
        await hub.subscribe(group, tab.subscriber)
        hub.mark_ready(tab.subscriber)

    await asyncio.to_thread(layer_on.stop)
    for tab in tabs:
        await asyncio.wait_for(tab.lost.wait(), TIMEOUT)
    late = Tab(running(1, action_id))
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises when refused
        await hub.subscribe(group, late.subscriber)

    await asyncio.to_thread(layer_on.start)
    again = Tab(running(1, action_id))
    await hub.subscribe(group, again.subscriber)
    hub.mark_ready(again.subscriber)
    await layer_call(layer.group_send, group, event_for(running(2, action_id)))
    await again.seen(2)
    assert all(tab.frames == [] for tab in tabs)
    await hub.unsubscribe(group, again.subscriber)


async def test_a_hub_renews_memberships_before_the_layer_expires_them(
    settings: Any, closing_pools: list[Any]
) -> None:
    from async_actions.layers import InMemoryChannelLayer

    settings.ASYNC_ACTIONS = {
        **getattr(settings, "ASYNC_ACTIONS", {}),
        "LAYER_CHECK_INTERVAL": 0.05,
    }
    layer = InMemoryChannelLayer(group_expiry=1, clean_interval=0)
    hub = Hub(layer)

    async def probe_passes(timeout: float) -> bool:
        return True  # so only the renewal can keep the memberships alive

    hub._probe = probe_passes  # type: ignore[method-assign]
    action_id = str(uuid.uuid4())
    group = group_name(action_id)
    tab = Tab(running(1, action_id))
    await hub.subscribe(group, tab.subscriber)
    hub.mark_ready(tab.subscriber)
    refreshes = hub.rejoins
    for seq in range(2, 8):  # 3 s: memberships added at the start would have expired
        await asyncio.sleep(0.5)
        await layer_call(layer.group_send, group, event_for(running(seq, action_id)))
        await tab.seen(seq)
    assert hub.rejoins > refreshes
    await hub.unsubscribe(group, tab.subscriber)


async def closed_with(tab: WebsocketCommunicator) -> int:
    """The close code of a tab the server refuses, before or after accepting it."""
    connected, code = await tab.connect(TIMEOUT)
    if not connected:
        return int(code)
    output = await tab.receive_output(TIMEOUT)
    assert output["type"] == "websocket.close", output
    return int(output["code"])


@pytest.mark.django_db(transaction=True)
async def test_tabs_are_closed_with_4503_while_redis_is_down_and_live_again_after_restart(
    layer_on: RedisServer, closing_pools: list[Any]
) -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=1)
    layer = get_channel_layer()
    closing_pools.append(layer)
    watching = [communicator(action.pk, session) for _ in range(2)]
    for tab in watching:
        await tab.connect(TIMEOUT)
        assert (await tab.receive_json_from(TIMEOUT))["action"]["seq"] == 1
    pusher.push(action.pk, {**action.snapshot(), "seq": 2})  # as a worker publishes
    for tab in watching:
        assert (await tab.receive_json_from(TIMEOUT))["action"]["seq"] == 2

    await asyncio.to_thread(layer_on.stop)
    for tab in watching:  # the page's script polls the status JSON on 4503
        assert await tab.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4503}
    assert await closed_with(communicator(action.pk, session)) == 4503

    # Progress stored during the outage; Redis comes back empty.
    await Action.objects.filter(pk=action.pk).aupdate(seq=3, percent=30)
    await asyncio.to_thread(layer_on.start)
    tab = communicator(action.pk, session)
    await tab.connect(TIMEOUT)
    assert (await tab.receive_json_from(TIMEOUT))["action"]["seq"] == 3
    pusher.push(action.pk, {**action.snapshot(), "seq": 4})  # as a worker publishes
    assert (await tab.receive_json_from(TIMEOUT))["action"]["seq"] == 4
    await tab.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_open_tabs_get_the_stored_state_then_live_updates_after_redis_comes_back_empty(
    layer_on: RedisServer, closing_pools: list[Any]
) -> None:
    session = await new_session()
    action = await make_action(session, status="running", seq=1)
    group = group_name(action.pk)
    layer = get_channel_layer()
    closing_pools.append(layer)
    tab = communicator(action.pk, session)
    await tab.connect(TIMEOUT)
    assert (await tab.receive_json_from(TIMEOUT))["action"]["seq"] == 1

    await asyncio.to_thread(layer_on.client().flushall)  # a restart the hub did not see
    await Action.objects.filter(pk=action.pk).aupdate(seq=5, status="succeeded", percent=100)
    await layer_call(layer.group_send, group, event_for({**action.snapshot(), "seq": 5}))  # lost
    final = (await tab.receive_json_from(TIMEOUT))["action"]
    assert (final["seq"], final["status"]) == (5, "succeeded")
    assert hub_for(layer).losses == 0
    await tab.disconnect()


@pytest.mark.parametrize("value", [0, -1, "5", None, True])
def test_a_bad_layer_check_interval_fails_the_system_check(settings: Any, value: Any) -> None:
    from async_actions.checks import check_settings

    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "LAYER_CHECK_INTERVAL": value}
    assert [m.id for m in check_settings()] == ["async_actions.E080"]


def test_a_layer_check_interval_too_long_for_the_group_expiry_is_warned(settings: Any) -> None:
    from async_actions.checks import check_settings

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [("127.0.0.1", 6379)], "group_expiry": 60},
        }
    }
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "LAYER_CHECK_INTERVAL": 30}
    assert [m.id for m in check_settings()] == ["async_actions.W080"]
    settings.ASYNC_ACTIONS = {**settings.ASYNC_ACTIONS, "LAYER_CHECK_INTERVAL": 5}
    assert check_settings() == []
