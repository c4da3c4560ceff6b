"""Side by side with celery-progress on one daphne: update latency, start latency, status RPS.

One daphne process serves the demo site with celery-progress's URLs added
(bench/settings_peer.py), so both sides run on the same server, machine and run. The peer
is set up as its README says: Celery with the Redis broker and result backend, its
``ProgressRecorder`` in the task, its progress view polled by the page every 500 ms.

1. Update latency, progress update -> browser-side client has it. Ours: a handler in the
   daphne process calls ``set_progress`` at ~10 Hz with ``time.time()`` in ``data``; a
   WebSocket client over TCP records arrival. Peer: ``ProgressRecorder.set_progress`` at
   ~10 Hz with the time in its description; a client polls celery-progress's view the way
   its JavaScript does (request, then wait ``pollInterval`` = 500 ms, repeat). Updates
   the poller never sees are counted too.
2. Start latency: our API ``POST /api/actions/`` (and in-process ``service.start``) ->
   handler body running, vs ``task.delay()`` -> task body in a Celery worker
   (``--pool=solo``, the worker's own default prefetch).
3. Status endpoint requests per second: our status JSON (``/reports/status/<id>/``, owner
   checked, one database read) vs celery-progress's ``get_progress`` view (one Redis read),
   8 keep-alive connections, same daphne.

Usage: python bench/bench_vs_celery.py [--repeat 3] [--no-write]
Needs Redis on 127.0.0.1:6379 and the bench extra (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ROOT,
    cpu_seconds,
    django_with_user,
    http_get_loop,
    machine,
    percentile,
    record,
    start_daphne,
    stop,
    write_section,
)

TMP = Path(tempfile.mkdtemp(prefix="aa-bench-peer-"))
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": "bench.settings_peer",
    "DEMO_SQLITE_PATH": str(TMP / "db.sqlite3"),
    "DJANGO_DEBUG": "0",
    "PYTHONPATH": str(ROOT),
}
POLL_INTERVAL = 0.5  # celery-progress's JavaScript default (pollInterval)
TARGET_RATIO = 50.0
STATUS_TARGET = 1.5


class Site:
    def __init__(self, port: int, token: str, session: str, pid: int = 0) -> None:
        self.port, self.token, self.session, self.pid = port, token, session, pid
        self.base = f"http://127.0.0.1:{port}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.base}/api/actions/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def finished(self, pk: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            action = self.api("GET", f"{pk}/")
            if action["finished_at"]:
                return action
            time.sleep(0.01)
        raise SystemExit(f"action {pk} did not finish")


# -- 1. update latency ----------------------------------------------------------------


async def _ours_latency(site: Site, seconds: float) -> list[float]:
    from websockets.asyncio.client import connect

    action = site.api(
        "POST", "", {"handler": "bench.ticker", "request": {"hz": 10, "seconds": seconds}}
    )
    url = f"ws://127.0.0.1:{site.port}/ws/async-actions/{action['id']}/"
    headers = {"Cookie": f"sessionid={site.session}", "Origin": site.base}
    samples = []
    async with connect(url, additional_headers=headers) as socket:
        while True:
            event = json.loads(await asyncio.wait_for(socket.recv(), 30))["action"]
            if event.get("data") and "t" in event["data"] and event["status"] == "running":
                samples.append((time.time() - event["data"]["t"]) * 1000)
            if event["status"] != "running" and event["status"] != "pending":
                return samples


def _peer_latency(site: Site, seconds: float) -> tuple[list[float], int, int]:
    """Per update: time until a poll returns it or a later one (what the page shows).

    Returns the latencies, the number of updates, and how many were never returned
    themselves (overtaken by a later update before the next poll).
    """
    from celery_progress.backend import ProgressRecorder

    from bench.celery_app import stamp

    task_id = str(uuid.uuid4())
    total = int(seconds * 10)
    done = threading.Event()
    sent: list[float] = []

    def producer() -> None:
        stamp.push_request(id=task_id)
        try:
            recorder = ProgressRecorder(stamp)
            start = time.monotonic()
            for i in range(total):
                due = start + (i + 1) / 10 + random.uniform(-0.02, 0.02)
                time.sleep(max(0.0, due - time.monotonic()))
                sent.append(time.time())
                recorder.set_progress(i, total, str(i))
        finally:
            stamp.pop_request()
            time.sleep(POLL_INTERVAL * 2)
            done.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    url = f"{site.base}/celery-progress/{task_id}/"
    polls: list[tuple[float, int]] = []  # (when the answer arrived, newest index in it)
    while not done.is_set():
        with urllib.request.urlopen(url, timeout=10) as response:
            info = json.loads(response.read())
        description = (info.get("progress") or {}).get("description") or ""
        if description:
            polls.append((time.time(), int(description)))
        time.sleep(POLL_INTERVAL)
    thread.join()
    samples = []
    for i, when in enumerate(sent):
        seen = next((at for at, newest in polls if newest >= i and at >= when), None)
        if seen is not None:
            samples.append((seen - when) * 1000)
    returned = {newest for _at, newest in polls}
    return samples, total, total - len(returned)


# -- 2. start latency -----------------------------------------------------------------


def _ours_start_api(site: Site, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.time()
        action = site.api("POST", "", {"handler": "bench.stamp", "request": {}})
        final = site.finished(action["id"])
        out.append((final["response"]["t"] - t0) * 1000)
        time.sleep(0.05)
    return out


def _ours_start_inprocess(n: int) -> list[float]:
    import async_actions
    from async_actions import service
    from async_actions.models import Action

    # This process runs what it starts (else daphne picks the rows up, seconds later).
    async_actions.startup()
    out = []
    for _ in range(n):
        t0 = time.time()
        pk = service.start("bench.stamp", {}, session_key="bench").action.pk
        while not Action.objects.filter(pk=pk).finished().exists():
            time.sleep(0.002)
        out.append((Action.objects.get(pk=pk).response["t"] - t0) * 1000)
        time.sleep(0.05)
    return out


def _peer_start(n: int) -> list[float]:
    from bench.celery_app import stamp

    out = []
    for _ in range(n):
        t0 = time.time()
        body = stamp.delay().get(timeout=30)
        out.append((body - t0) * 1000)
        time.sleep(0.05)
    return out


# -- 3. status requests per second -------------------------------------------------------


def _status_targets(site: Site) -> tuple[str, str]:
    from celery_progress.backend import ProgressRecorder

    from async_actions.models import Action
    from bench.celery_app import stamp
    from example_project.demo.views import ReportView

    action = Action.objects.create(
        handler=ReportView.handler_name(),
        session_key=site.session,
        user_id=int(__import__("django.contrib.sessions.backends.db", fromlist=["x"])
                    .SessionStore(site.session)["_auth_user_id"]),
        status="running",
        percent=42,
        message="halfway",
    )  # fmt: skip
    task_id = str(uuid.uuid4())
    stamp.push_request(id=task_id)
    try:
        ProgressRecorder(stamp).set_progress(42, 100, "halfway")
    finally:
        stamp.pop_request()
    return f"/reports/status/{action.pk}/", f"/celery-progress/{task_id}/"


def _rps(site: Site, path: str, seconds: float, cookie: bool, etag: str = "") -> float:
    """Requests per second of daphne CPU (see ``_common.cpu_seconds``); wall rate logged."""
    headers = {"Cookie": f"sessionid={site.session}"} if cookie else {}
    if etag:
        headers["If-None-Match"] = etag
    cpu = cpu_seconds(site.pid)
    done = asyncio.run(http_get_loop(site.port, path, headers, seconds, conns=8))
    used = max(1e-3, cpu_seconds(site.pid) - cpu)
    print(f"{path} {'(304) ' if etag else ''}{done / seconds:.0f}/s wall, "
          f"{done / used:.0f}/CPU-s", file=sys.stderr)  # fmt: skip
    return done / used


def _status_figures(site: Site, repeat: int, seconds: float) -> dict[str, list[float]]:
    """Requests per second of our status JSON and the peer's view, alternating runs."""
    ours_path, peer_path = _status_targets(site)
    _rps(site, ours_path, 1, cookie=True)  # warm-up: connections, first queries
    _rps(site, peer_path, 1, cookie=False)
    request = urllib.request.Request(
        f"{site.base}{ours_path}", headers={"Cookie": f"sessionid={site.session}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        etag = response.headers["ETag"]
    if os.environ.get("BENCH_PROFILE"):  # py-spy of daphne serving our status JSON
        spy = subprocess.Popen(
            ["py-spy", "record", "-p", str(site.pid), "-o", os.environ["BENCH_PROFILE"],
             "--format", "raw", "-r", "200", "-d", str(int(seconds))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1)
        _rps(site, ours_path, seconds, cookie=True)
        spy.wait()
    out: dict[str, list[float]] = {"ours": [], "ours_304": [], "peer": []}
    for _ in range(repeat):
        out["ours"].append(_rps(site, ours_path, seconds, cookie=True))
        out["ours_304"].append(_rps(site, ours_path, seconds, cookie=True, etag=etag))
        out["peer"].append(_rps(site, peer_path, seconds, cookie=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per latency run")
    parser.add_argument("--starts", type=int, default=30)
    parser.add_argument("--rps-seconds", type=float, default=5.0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--status-only", action="store_true", help="only the status endpoint figure (prints)"
    )
    args = parser.parse_args()

    token, session = django_with_user(ENV)
    import redis

    redis.Redis.from_url(ENV.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")).ping()
    logs = open(TMP / "celery.log", "w")  # noqa: SIM115
    processes = []
    try:
        server = start_daphne(ENV, TMP / "daphne.log")
        processes.append(server.process)
        worker = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"]
        worker += ["--pool=solo", "-Q", "bench", "--without-gossip", "--without-mingle"]
        processes.append(
            subprocess.Popen(worker, cwd=ROOT, env=ENV, stdout=logs, stderr=subprocess.STDOUT)
        )
        site = Site(server.port, token, session, server.process.pid)
        if args.status_only:
            print(json.dumps(_status_figures(site, args.repeat, args.rps_seconds)))
            return
        _peer_start(3)  # warm-up: worker ready, connections open
        _ours_start_api(site, 3)

        ours_lat, peer_lat, peer_missed, peer_total = [], [], 0, 0
        for _ in range(args.repeat):
            ours_lat += asyncio.run(_ours_latency(site, args.seconds))
            samples, total, missed = _peer_latency(site, args.seconds)
            peer_lat += samples
            peer_total += total
            peer_missed += missed
        ours_api = _ours_start_api(site, args.starts)
        ours_inproc = _ours_start_inprocess(args.starts)
        peer_start = _peer_start(args.starts)
        status = _status_figures(site, args.repeat, args.rps_seconds)
        ours_rps, peer_rps = status["ours"], status["peer"]
    finally:
        for process in processes:
            stop(process)

    def p(values: list[float], q: float) -> str:
        return f"{percentile(values, q):.1f} ms"

    lat_ratio = percentile(peer_lat, 50) / percentile(ours_lat, 50)
    lat_verdict = "met" if lat_ratio >= TARGET_RATIO and percentile(ours_lat, 50) <= 5 else "MISSED"
    rps_o, rps_p = statistics.median(ours_rps), statistics.median(peer_rps)
    rps_304 = statistics.median(status["ours_304"])
    status_verdict = "met" if rps_o / rps_p >= STATUS_TARGET else "MISSED"
    start_ratio = percentile(peer_start, 50) / percentile(ours_api, 50)
    rows = [
        {
            "figure": "update → client latency, p50 (embedded)",
            "ours": p(ours_lat, 50),
            "peer": p(peer_lat, 50),
            "ratio": f"{lat_ratio:.0f}× faster",
            "target": f"≤ 5 ms, ≥ {TARGET_RATIO:.0f}×",
            "verdict": lat_verdict,
        },
        {
            "figure": "update → client latency, p99 (embedded)",
            "ours": p(ours_lat, 99),
            "peer": p(peer_lat, 99),
            "ratio": f"{percentile(peer_lat, 99) / percentile(ours_lat, 99):.0f}× faster",
            "target": "",
        },
        {
            "figure": "start latency p50 (API POST vs task.delay())",
            "ours": p(ours_api, 50),
            "peer": p(peer_start, 50),
            "ratio": f"{start_ratio:.1f}×"
            if start_ratio >= 1
            else f"{1 / start_ratio:.1f}× slower",
            "target": "",
        },
        {
            "figure": "status endpoint requests per daphne CPU-second (full JSON)",
            "ours": f"{rps_o:.0f}",
            "peer": f"{rps_p:.0f}",
            "ratio": f"{rps_o / rps_p:.2f}×",
            "target": f"≥ {STATUS_TARGET}×",
            "verdict": status_verdict,
            "key": "status_rps",
            "profile": "py-spy",  # daphne serving our status JSON, a pass before the runs
        },
        {
            "figure": "status endpoint, unchanged state (304 to If-None-Match)",
            "ours": f"{rps_304:.0f}",
            "peer": f"{rps_p:.0f}",
            "ratio": f"{rps_304 / rps_p:.2f}×",
            "target": "",
        },
    ]
    record("vs_celery", rows)
    body = f"""
## Side by side with celery-progress: latency, start, status endpoint

`python bench/bench_vs_celery.py` — one daphne process serves both (the demo site with
celery-progress's URLs added); the peer runs as its README sets it up: Celery {
        __import__("celery").__version__
    }, Redis broker and result backend, a `--pool=solo` worker. {args.repeat} repetitions.

**Update → client latency** (progress update to a browser-side client holding it).
Ours: a handler in the daphne process reports at ~10 Hz; a WebSocket client over TCP.
Peer: `ProgressRecorder.set_progress` at ~10 Hz; a client polling its progress view as
its JavaScript does (request, then {POLL_INTERVAL * 1000:.0f} ms pause). For every
update, the latency is the time until the client holds that update or a later one (what
the page shows); "never seen" counts updates overtaken before any poll returned them.

| | samples | p50 | p90 | p99 | max | updates never seen by the client |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| ours (WebSocket push) | {len(ours_lat)} | {p(ours_lat, 50)} | {p(ours_lat, 90)} | \
{p(ours_lat, 99)} | {max(ours_lat):.1f} ms | 0 |
| celery-progress (polling) | {len(peer_lat)} | {p(peer_lat, 50)} | {p(peer_lat, 90)} | \
{p(peer_lat, 99)} | {max(peer_lat):.1f} ms | {peer_missed} of {peer_total} |

p50 ratio: **{lat_ratio:.0f}×** (target ≥ {TARGET_RATIO:.0f}×: {lat_verdict}).

**Start latency**, request to the body of the job running, {args.starts} sequential starts:

| | p50 | p90 | max |
| --- | ---: | ---: | ---: |
| ours, API `POST /api/actions/` through daphne (auth, insert, commit, thread) | \
{p(ours_api, 50)} | {p(ours_api, 90)} | {max(ours_api):.1f} ms |
| ours, `service.start()` in process | {p(ours_inproc, 50)} | {p(ours_inproc, 90)} | \
{max(ours_inproc):.1f} ms |
| celery-progress: `task.delay()` → task body (Redis broker, solo worker) | \
{p(peer_start, 50)} | {p(peer_start, 90)} | {max(peer_start):.1f} ms |

**Status endpoint**, requests per second of daphne CPU (requests served divided by the
CPU time daphne used meanwhile: on a shared machine the wall-clock rate follows the
neighbours' load), 8 keep-alive connections, {args.rps_seconds:.0f} s per run, median of
{args.repeat}: ours {rps_o:.0f} (runs {", ".join(f"{v:.0f}" for v in ours_rps)}; session
and user read by Django's middleware, then one read of the action, the owner's, so no
permission query) vs celery-progress {rps_p:.0f} (runs {", ".join(f"{v:.0f}" for v in peer_rps)};
one Redis read, no session): **{rps_o / rps_p:.2f}×** (target ≥ {STATUS_TARGET}×). A poll that
sends back the ETag of an unchanged state gets a bodiless 304: {rps_304:.0f}
(**{rps_304 / rps_p:.2f}×**). Both are served by the same single daphne process. Most
of a request's CPU is the server's and Django's own (daphne, the ASGI handler, a thread
hop per sync middleware), which the peer pays too: see the profile below.
With our pages holding a WebSocket, a watching tab makes no status requests at all;
polling is the fallback.

Machine: {machine()}; Redis on loopback.
"""
    print(body)
    if not args.no_write:
        write_section("vs_celery", body)


if __name__ == "__main__":
    main()
