"""The WebSocket as a client on the network meets it: a real daphne, a raw WebSocket client.

What daphne lets an application send (only 1000 and 3000-4999 as close codes) and the
order in which it hands frames to the consumer are properties of the server, not of
``channels.testing``; these tests see both. The server runs ``tests.settings_sockets``
(``MAX_SOCKETS_PER_OWNER_ACTION`` 3, a trusted wildcard origin).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import Server, daphne, manage, sqlite_env

pytestmark = pytest.mark.slow

TIMEOUT = 10
TRIES = 50

SETUP = """
from django.contrib.auth import get_user_model, SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from rest_framework.authtoken.models import Token
from async_actions.models import Action

def session_of(user=None):
    store = SessionStore()
    if user is not None:
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return store.session_key

User = get_user_model()
owner = User.objects.create_user('owner', password='pw')
other = User.objects.create_user('other', password='pw')
admin = User.objects.create_superuser('admin', password='pw')
anon_owner = session_of()
pending = Action.objects.create(handler='tests.wait_file', session_key=anon_owner, request={})
print(Token.objects.create(user=owner).key, session_of(owner), session_of(other),
      session_of(admin), anon_owner, session_of(), pending.pk)
"""


@dataclass
class Site:
    server: Server
    tmp: Path
    token: str
    owner: str  # session keys
    other: str
    admin: str
    anon_owner: str
    anon_other: str
    pending: str  # an action of anon_owner that no runner holds: it stays pending

    @property
    def origin(self) -> str:
        return self.server.base

    def ws_url(self, pk: Any) -> str:
        return f"{self.server.base.replace('http', 'ws', 1)}/ws/async-actions/{pk}/"

    def start_waiting(self) -> tuple[str, Path]:
        """A running action of ``owner`` that succeeds once the returned path exists."""
        gate = self.tmp / f"gate-{uuid.uuid4().hex}"
        body = {"handler": "tests.wait_file", "request": {"path": str(gate)}}
        request = urllib.request.Request(
            f"{self.server.base}/api/actions/",
            method="POST",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            assert response.status == 201
            return json.loads(response.read())["id"], gate

    def open(self, pk: Any, session: str | None, origin: str | None = "") -> Any:
        headers = {}
        if origin is not None:
            headers["Origin"] = origin or self.origin
        if session:
            headers["Cookie"] = f"sessionid={session}"
        return connect(self.ws_url(pk), additional_headers=headers, open_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("ws-server")
    env = sqlite_env(tmp, "tests.settings_sockets")
    manage(env, "migrate", "--noinput", "-v0")
    keys = manage(env, "shell", "-c", SETUP).split()[-7:]
    with daphne(env, tmp / "daphne.log", migrate=False) as server:
        yield Site(server, tmp, *keys)


async def snapshot(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert frame["type"] == "update", frame
    return frame["action"]


async def until_status(ws: ClientConnection, status: str) -> list[dict[str, Any]]:
    frames = []
    while not frames or frames[-1].get("action", {}).get("status") != status:
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
    return frames


async def close_code(ws: ClientConnection) -> tuple[int | None, list[Any]]:
    """Read until the server closes; its close code and any frames it sent first."""
    received = []
    try:
        while True:
            received.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), received


async def close_code_or_first_frame(ws: ClientConnection) -> tuple[int | None, list[Any]]:
    try:
        return None, [await asyncio.wait_for(ws.recv(), TIMEOUT)]
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), []


#: Every kind of frame a client can send, cancel first and last.
FRAMES: list[str | bytes] = [
    '{"type": "cancel"}',
    b'{"type": "cancel"}',
    '{"type": "explode"}',
    "not json",
    "[1, 2]",
    b"\x00\xff",
    "x" * 5000,
    '{"type": "cancel"}',
]


async def attack(site: Site, pk: str, session: str | None) -> tuple[int | None, list[Any]]:
    """Send every frame the moment the handshake completes; how the server closed."""
    async with site.open(pk, session) as ws:
        try:
            for frame in FRAMES:
                await ws.send(frame)
        except ConnectionClosed:
            pass  # the server already closed: the frames that got through still count
        return await close_code(ws)


def test_no_frame_from_a_visitor_who_may_not_see_the_action_is_acted_on(site: Site) -> None:
    """Fails on df31ab2: the cancel sent right after the handshake cancelled the action."""
    running, gate = site.start_waiting()

    async def scenario() -> None:
        async with site.open(running, site.owner) as watcher:
            assert (await snapshot(watcher))["status"] in ("pending", "running")
            strangers = [None, site.other, site.anon_other]
            for attempt in range(TRIES):
                for session in strangers:
                    pk = running if attempt % 2 == 0 else site.pending
                    assert await attack(site, pk, session) == (4404, [])
            # The owner's tab saw no cancel, and its action ends on its own.
            async with site.open(running, site.owner) as again:
                state = await snapshot(again)
                assert state["status"] == "running"
                assert state["cancel_requested"] is False
            gate.touch()
            frames = await until_status(watcher, "succeeded")
            assert all(not frame["action"]["cancel_requested"] for frame in frames)
        # The untouched pending action is still the anonymous owner's to cancel.
        async with site.open(site.pending, site.anon_owner) as ws:
            state = await snapshot(ws)
            assert (state["status"], state["cancel_requested"]) == ("pending", False)
            await ws.send('{"type": "cancel"}')
            frames = await until_status(ws, "cancelled")
            if {"type": "cancel", "status": "ok"} not in frames:  # the reply may come after
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {
                    "type": "cancel",
                    "status": "ok",
                }

    asyncio.run(scenario())


def test_an_unknown_action_closes_with_4404(site: Site) -> None:
    async def scenario() -> None:
        async with site.open(uuid.uuid4(), site.owner) as ws:
            assert await close_code(ws) == (4404, [])

    asyncio.run(scenario())


def test_an_oversize_frame_closes_with_4413_and_the_socket_can_come_back(site: Site) -> None:
    """Fails on df31ab2: daphne refused the 1009 close and the client saw 1011."""
    pk, gate = site.start_waiting()

    async def scenario() -> None:
        async with site.open(pk, site.owner) as ws:
            await snapshot(ws)
            await ws.send("x" * 5000)
            assert await close_code(ws) == (4413, [])
        async with site.open(pk, site.owner) as ws:
            assert (await snapshot(ws))["id"] == pk
            gate.touch()
            await until_status(ws, "succeeded")

    asyncio.run(scenario())
    assert "Traceback" not in site.server.log()


def test_sockets_over_the_cap_close_with_4429_per_owner_and_action(site: Site) -> None:
    """Fails on df31ab2: every socket was accepted."""
    pk, gate = site.start_waiting()

    async def scenario() -> None:
        tabs = [await site.open(pk, site.owner) for _ in range(3)]
        for tab in tabs:
            await snapshot(tab)
        async with site.open(pk, site.owner) as over:
            assert await close_code(over) == (4429, [])
        # Another owner (an administrator sees every action) has sockets of its own.
        async with site.open(pk, site.admin) as admin_tab:
            assert (await snapshot(admin_tab))["id"] == pk
        # A closed tab frees its place once the server has seen the close.
        await tabs.pop().close()
        for _ in range(500):
            async with site.open(pk, site.owner) as again:
                code, frames = await close_code_or_first_frame(again)
            if code is None:
                assert json.loads(frames[0])["type"] == "update"
                break
            assert code == 4429
        else:
            raise AssertionError("the closed tab's place was never freed")
        gate.touch()
        for tab in tabs:
            await until_status(tab, "succeeded")
            await tab.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        ("", True),  # the site itself
        ("http://app.trusted.test:8443", True),  # CSRF_TRUSTED_ORIGINS http://*.trusted.test:8443
        ("https://127.0.0.1:{port}", False),  # wrong scheme
        ("http://127.0.0.1:1", False),  # wrong port
        ("http://localhost:{port}", False),  # another allowed host, but not this one
        ("http://evil.test:{port}", False),  # wrong host
        ("http://app.trusted.test", False),  # trusted host, wrong port
        (None, False),  # no Origin header
    ],
)
def test_only_the_sites_own_and_trusted_origins_may_open_a_socket(
    site: Site, origin: str | None, accepted: bool
) -> None:
    """Fails on df31ab2 for the wrong scheme and port: only host names were compared."""
    port = site.server.base.rsplit(":", 1)[1]
    origin = origin.format(port=port) if origin else origin

    async def scenario() -> None:
        try:
            async with site.open(site.pending, site.anon_owner, origin=origin) as ws:
                assert (await snapshot(ws))["id"] == site.pending
                opened = True
        except InvalidStatus as refused:
            assert refused.response.status_code == 403
            opened = False
        assert opened is accepted

    asyncio.run(scenario())


BAD_PATHS = [
    "ws/async-actions/not-a-uuid/",
    "ws/async-actions/%00/",
    "ws/async-actions/" + "f" * 5000 + "/",
    "ws/async-actions/{pk}",  # no trailing slash
    "ws/async-actions/{pk}/extra/",
    "ws/async-actions/",
    "ws/async-actions//",
]
OTHER_PATHS = ["ws/actions/{pk}/", "", "ws/", "admin/", "%ff%fe/", "a" * 3000]


def test_a_malformed_websocket_path_is_refused_without_an_exception(site: Site) -> None:
    """Before, every path the router did not match (a non-UUID id under
    ``ws/async-actions/``, any other path) raised "No route found" inside the
    application: a traceback in the server log per handshake. Now a malformed id closes
    with 4404 like an unknown one, and any other path is refused (HTTP 403)."""
    base = site.server.base.replace("http", "ws", 1)
    headers = {"Origin": site.origin, "Cookie": f"sessionid={site.owner}"}
    before = site.server.log().count("Exception inside application")

    async def scenario() -> None:
        for path in BAD_PATHS:
            url = f"{base}/{path.format(pk=site.pending)}"
            async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
                assert await close_code(ws) == (4404, []), path
        for path in OTHER_PATHS:
            url = f"{base}/{path.format(pk=site.pending)}"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers, open_timeout=TIMEOUT):
                    pass
            assert refused.value.response.status_code == 403, path

    asyncio.run(scenario())
    assert site.server.log().count("Exception inside application") == before
