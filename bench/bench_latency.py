"""Latency from ``ctx.set_progress`` in a worker thread to the frame a WebSocket client gets.

Embedded default: SQLite file, in-memory channel layer, the real ASGI application of
the example project (origin check, session auth, ActionConsumer). The client is
Channels' ``WebsocketCommunicator`` on the server's event loop, so the path measured is
worker thread -> Publisher -> Pusher (run_coroutine_threadsafe) -> in-memory layer ->
consumer -> ASGI send; it leaves out TCP and WebSocket framing (loopback, well under a
millisecond).

``PUSH_INTERVAL`` is 0 here so every update is pushed: with the default 50 ms,
updates closer together than that are coalesced on purpose and a "latency" per
update would measure the coalescing window, not the path. Updates are sent one at a
time (the thread waits for each to arrive) so queueing does not inflate the figures.

Usage: python bench/bench_latency.py [--updates 2000] [--no-write]
Writes its section of docs/performance.md between the bench:latency markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, percentile, record, write_section

TMP = Path(tempfile.mkdtemp(prefix="aa-bench-latency-"))
os.environ["DJANGO_SETTINGS_MODULE"] = "example_project.settings"
os.environ["DEMO_SQLITE_PATH"] = str(TMP / "db.sqlite3")
os.environ["DJANGO_DEBUG"] = "0"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

settings.ASYNC_ACTIONS = {"PUSH_INTERVAL": 0.0}
settings.LOGGING = {"version": 1}

from asgiref.sync import sync_to_async  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402

from async_actions.conf import action_settings  # noqa: E402
from async_actions.context import ActionContext  # noqa: E402
from async_actions.executor import claim  # noqa: E402
from async_actions.models import Action  # noqa: E402
from async_actions.progress import Publisher  # noqa: E402

TARGET_P50_MS, TARGET_P99_MS = 5.0, 25.0


async def measure(updates: int, warmup: int) -> list[float]:
    from example_project.asgi import application

    action_settings.reload()
    session = SessionStore()
    await sync_to_async(session.save)()
    action = await Action.objects.acreate(handler="bench.latency", session_key=session.session_key)
    action = await sync_to_async(claim)(action.pk)  # running, as under a runner
    ctx = ActionContext(action, Publisher(action))

    ws = WebsocketCommunicator(
        application,
        f"/ws/async-actions/{action.pk}/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
            (b"cookie", f"sessionid={session.session_key}".encode()),
        ],
    )
    connected, _ = await ws.connect(timeout=10)
    assert connected
    await ws.receive_from(timeout=10)  # the snapshot

    loop = asyncio.get_running_loop()
    arrived = threading.Event()
    stop = threading.Event()
    samples: list[float] = []

    def worker() -> None:
        for i in range(updates + warmup):
            arrived.clear()
            ctx.set_progress(
                100 * i / (updates + warmup), f"update {i}", {"t": time.perf_counter()}
            )
            if not arrived.wait(5) or stop.is_set():
                raise SystemExit(f"update {i} did not arrive within 5 s")

    thread = threading.Thread(target=worker, name="bench-worker", daemon=True)
    thread.start()
    try:
        for i in range(updates + warmup):
            text = await ws.receive_from(timeout=10)
            now = time.perf_counter()
            sent = json.loads(text)["action"]["data"]["t"]
            if i >= warmup:
                samples.append((now - sent) * 1000)
            loop.call_soon(arrived.set)
    finally:
        stop.set()
        arrived.set()
        await ws.disconnect()
    await loop.run_in_executor(None, thread.join, 10)
    return samples


def section(samples: list[float], updates: int) -> str:
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    verdict = (
        "meets the targets"
        if p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS
        else "MISSES the targets"
    )
    return "\n".join(
        [
            "## Progress latency: worker thread to WebSocket client",
            "",
            "`python bench/bench_latency.py` — embedded default (SQLite file, in-memory channel",
            "layer, the example project's ASGI application with origin check and session auth).",
            "A worker thread calls `ctx.set_progress(...)` with a timestamp in `data`; the",
            "WebSocket client (Channels' `WebsocketCommunicator` on the server loop) records when",
            "the frame arrives. One update at a time, so no queueing. `PUSH_INTERVAL` is set to 0",
            "for this measure so every update is pushed (with the default 50 ms, updates closer",
            "together are coalesced by design). Not included: TCP and WebSocket framing on",
            "loopback.",
            "",
            "| updates | p50 | p90 | p99 | max | target p50 / p99 |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
            f"| {len(samples)} | {p50:.2f} ms | {percentile(samples, 90):.2f} ms | "
            f"{p99:.2f} ms | {max(samples):.2f} ms | "
            f"≤ {TARGET_P50_MS:.0f} ms / ≤ {TARGET_P99_MS:.0f} ms: {verdict} |",
            "",
            f"Machine: {machine()}; mean {statistics.fmean(samples):.2f} ms.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    samples = asyncio.run(measure(args.updates, args.warmup))
    text = section(samples, args.updates)
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    ok = p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS
    record(
        "latency",
        [
            {
                "figure": "set_progress → WebSocket consumer, in process, p50 / p99",
                "ours": f"{p50:.2f} / {p99:.2f} ms",
                "peer": "",
                "ratio": "",
                "target": f"≤ {TARGET_P50_MS:.0f} / ≤ {TARGET_P99_MS:.0f} ms",
                "verdict": "met" if ok else "MISSED",
            }
        ],
    )
    print(text)
    if not args.no_write:
        write_section("latency", text)


if __name__ == "__main__":
    main()
