"""Fan-out: 1,000 WebSocket clients on one daphne process watching 100 actions at 10 Hz.

The embedded default (in-memory channel layer, ThreadRunner) in one daphne process; 100
``bench.ticker`` actions report progress 10 times a second with ``time.time()`` in their
data; 1,000 WebSocket clients (10 per action, over TCP on loopback, all in this process)
record when each frame arrives. Reported: delivery latency p50/p99, clients that missed
their action's final state (must be 0), and daphne's resident memory per connection
(RSS after the clients connected minus before, divided by the number of clients).

The clients share the machine's 2 cores with the server, as a load generator must here.

Usage: python bench/bench_fanout.py [--clients 1000] [--actions 100] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    FINAL,
    ROOT,
    django_with_user,
    free_port,
    machine,
    percentile,
    record,
    stop,
    wait_port,
    write_section,
)

TMP = Path(tempfile.mkdtemp(prefix="aa-bench-fanout-"))
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": os.environ.get("BENCH_SETTINGS", "bench.settings_fanout"),
    "DEMO_SQLITE_PATH": str(TMP / "db.sqlite3"),
    "DJANGO_DEBUG": "0",
    "PYTHONPATH": str(ROOT),
}
GO_FILE = TMP / "go"
TARGET_P99_MS, TARGET_KB = 100.0, 100.0
HANDLER = os.environ.get("BENCH_FANOUT_HANDLER", "bench.ticker")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")


def _start(port: int, token: str, seconds: float, go_file: str = "") -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/actions/",
        data=json.dumps(
            {"handler": HANDLER, "request": {"hz": 10, "seconds": seconds, "go_file": go_file}}
        ).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["id"]


async def _clients(
    port: int, session: str, ids: list[str], clients: int, daphne_pid: int, rss: dict
) -> tuple[list[float], list[float], int, int]:
    from websockets.asyncio.client import connect

    headers = {"Cookie": f"sessionid={session}", "Origin": f"http://127.0.0.1:{port}"}
    steady: list[float] = []  # frames sent once every client was connected
    during: list[float] = []  # frames sent while clients were still connecting
    finals = 0
    messages = 0

    async def watch(pk: str) -> None:
        nonlocal finals, messages
        url = f"ws://127.0.0.1:{port}/ws/async-actions/{pk}/"
        async with connect(url, additional_headers=headers, open_timeout=60) as socket:
            connected.release()
            while True:
                text = await asyncio.wait_for(socket.recv(), 60)
                now = time.time()
                event = json.loads(text)["action"]
                messages += 1
                data = event.get("data") or {}
                if event["status"] == "running" and "t" in data:
                    (steady if rss.get("connected_at") else during).append((now - data["t"]) * 1000)
                    rss["last_frame_at"] = now
                if event["status"] in FINAL:
                    finals += 1
                    return

    # Each client reads from the moment it is connected; 20 handshakes at a time.
    connected = asyncio.Semaphore(20)
    connect_started = time.time()
    tasks = []
    for i in range(clients):
        await connected.acquire()
        tasks.append(asyncio.create_task(watch(ids[i % len(ids)])))
    for _ in range(20):
        await connected.acquire()
    rss["after"] = _rss_kb(daphne_pid)
    rss["connected_at"] = time.time()
    rss["connect_s"] = rss["connected_at"] - connect_started
    GO_FILE.touch()  # the actions start ticking now that every client watches
    print(f"connected {clients} in {time.time() - rss['t0']:.1f}s", file=sys.stderr)

    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"{len(errors)} clients ended with an error, e.g. {errors[0]!r}", file=sys.stderr)
    return steady, during, finals, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    token, session = django_with_user(ENV)
    port = free_port()
    logs = open(TMP / "daphne.log", "w")  # noqa: SIM115
    daphne = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "example_project.asgi:application"],
        cwd=ROOT, env=ENV, stdout=logs, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(port, daphne)
        if os.environ.get("BENCH_PROFILE"):  # py-spy record of the server, for the docs
            subprocess.Popen(
                ["py-spy", "record", "-p", str(daphne.pid), "-o", os.environ["BENCH_PROFILE"],
                 "--format", "speedscope" if os.environ["BENCH_PROFILE"].endswith(".json")
                 else "raw", "-d", str(int(args.seconds + 15))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        _start(port, token, 0.2)  # warm-up: runner, layer, first WebSocket imports
        time.sleep(1)
        rss = {"before": _rss_kb(daphne.pid), "t0": time.time()}
        started = time.monotonic()
        ids = [_start(port, token, args.seconds, str(GO_FILE)) for _ in range(args.actions)]
        latencies, _during, finals, messages = asyncio.run(
            _clients(port, session, ids, args.clients, daphne.pid, rss)
        )
        elapsed = time.monotonic() - started
    finally:
        stop(daphne)

    per_conn = (rss["after"] - rss["before"]) / args.clients
    steady_s = max(1e-9, rss.get("last_frame_at", 0) - rss["connected_at"])
    rate = len(latencies) / args.clients / steady_s if latencies else 0.0
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    lost = args.clients - finals
    ok = p99 <= TARGET_P99_MS and per_conn <= TARGET_KB and lost == 0
    verdict = "met" if ok else "MISSED"
    record(
        "fanout",
        [
            {
                "figure": f"fan-out: {args.clients} clients, {args.actions} actions at 10 Hz, "
                "p50 / p99",
                "ours": f"{p50:.1f} / {p99:.1f} ms",
                "peer": "",
                "ratio": "",
                "target": f"p99 ≤ {TARGET_P99_MS:.0f} ms "
                f"({'met' if p99 <= TARGET_P99_MS else 'MISSED'})",
            },
            {
                "figure": "fan-out: final states lost",
                "ours": str(lost),
                "peer": "",
                "ratio": "",
                "target": f"0 ({'met' if lost == 0 else 'MISSED'})",
            },
            {
                "figure": "fan-out: daphne RSS per connection",
                "ours": f"{per_conn:.0f} KB",
                "peer": "",
                "ratio": "",
                "target": f"≤ {TARGET_KB:.0f} KB ({'met' if per_conn <= TARGET_KB else 'MISSED'})",
            },
        ],
    )
    body = f"""
## Fan-out: {args.clients:,} WebSocket clients on one daphne process

`python bench/bench_fanout.py` — embedded default (in-memory layer, ThreadRunner) in one
daphne process; {args.actions} actions report progress at 10 Hz for {args.seconds:.0f} s;
{args.clients:,} WebSocket clients over TCP ({args.clients // args.actions} per action)
run in the benchmark process on the same 2 cores.

| figure | result | target |
| --- | ---: | --- |
| delivery latency p50 | {p50:.1f} ms | |
| delivery latency p90 | {percentile(latencies, 90):.1f} ms | |
| delivery latency p99 | {p99:.1f} ms | ≤ {TARGET_P99_MS:.0f} ms |
| time to connect the clients (before the actions tick) | {rss["connect_s"]:.1f} s | |
| progress frames delivered | {messages:,} in {elapsed:.1f} s | |
| frames per client per second, all connected (the actions update 10/s) | {rate:.1f} | |
| clients that missed their action's final state | {lost} | 0 |
| daphne RSS per connection | {per_conn:.0f} KB ({rss["before"] / 1024:.0f} → \
{rss["after"] / 1024:.0f} MB) | ≤ {TARGET_KB:.0f} KB |

Verdict: {verdict}. Each event is serialized once per action (the JSON text travels in
the channel-layer message); the process joins each action's group once
(`async_actions.fanout`), and a tab the server cannot keep up with is written the newest
state, skipping stale progress: under load the frame rate per tab drops, not freshness.

Machine: {machine()}.
"""
    print(body)
    if not args.no_write:
        write_section("fanout", body)


if __name__ == "__main__":
    main()
