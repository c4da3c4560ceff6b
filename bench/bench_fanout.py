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
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ROOT,
    cpu_seconds,
    django_with_user,
    machine,
    percentile,
    record,
    start_daphne,
    stop,
    verdict,
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
TARGET_P99_MS, TARGET_KB, TARGET_RATIO = 100.0, 100.0, 3.0
#: A progress frame older than this when it arrives counts as delivered but not fresh.
FRESH_MS = 1000.0
ASGI_APP = "bench.asgi_peer:application"
#: The venv's py-spy (its bin directory need not be on PATH).
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
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


def _spawn_clients(port: int, session: str, paths: list[str], procs: int, limit: float) -> list:
    """``procs`` load-generator processes (bench/fanout_client.py) sharing ``paths``."""
    job = {
        "port": port,
        "cookie": f"sessionid={session}",
        "origin": f"http://127.0.0.1:{port}",
        "limit": limit,
    }
    out = []
    for i in range(procs):
        mine = {**job, "paths": paths[i::procs]}
        out.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fanout_client.py"), json.dumps(mine)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
    return out


def run_side(side: str, args: argparse.Namespace, token: str, session: str) -> dict:
    """One daphne, ``args.actions`` tickers, ``args.clients`` sockets on ``side``'s route."""
    go_file = TMP / f"go-{side}"
    server = start_daphne(ENV, TMP / f"daphne-{side}.log", ASGI_APP)
    daphne, port = server.process, server.port
    clients: list = []
    try:
        _start(port, token, 0.2)  # warm-up: runner, layer, first WebSocket imports
        # ... and as many short tickers as the run has, so the first side does not pay
        # for a new SQLite file (its write-ahead log growing from empty) in its figures.
        for _ in range(args.actions):
            _start(port, token, 0.5)
        time.sleep(3)
        rss = {"before": _rss_kb(daphne.pid)}
        ids = [_start(port, token, args.seconds, str(go_file)) for _ in range(args.actions)]
        route = "/ws/async-actions/{}/" if side == "ours" else "/ws/peer/{}/"
        paths = [route.format(ids[i % len(ids)]) for i in range(args.clients)]
        connect_started = time.monotonic()
        clients = _spawn_clients(port, session, paths, args.client_procs, args.seconds + 60)
        for process in clients:
            line = process.stdout.readline()
            if line.strip() != "connected":
                raise SystemExit(f"a client process said {line!r}")
        rss["after"] = _rss_kb(daphne.pid)
        connect_s = time.monotonic() - connect_started
        print(f"{side}: connected {args.clients} in {connect_s:.1f}s", file=sys.stderr)
        if os.environ.get("BENCH_PROFILE") and side == "ours":  # py-spy of the server
            subprocess.Popen(
                [PY_SPY, "record", "-p", str(daphne.pid), "-o", os.environ["BENCH_PROFILE"],
                 "--format", "raw", "-r", "100", "--nonblocking", "-d", str(int(args.seconds))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        cpu_at_go = cpu_seconds(daphne.pid)
        go_file.touch()  # the actions start ticking now that every client watches
        results = [json.loads(process.stdout.readline()) for process in clients]
        daphne_cpu = cpu_seconds(daphne.pid) - cpu_at_go
    finally:
        for process in clients:
            stop(process)
        stop(daphne)
    latencies = [ms for r in results for ms in r["latencies"]]
    first = min((r["first_at"] for r in results if r["first_at"]), default=0.0)
    last = max((r["last_at"] for r in results), default=0.0)
    steady = max(1e-9, last - first)
    for r in results:
        if r["given_up"]:
            print(f"{side}: {r['given_up']} sockets still waiting were given up", file=sys.stderr)
        if r["closes"]:
            print(f"{side}: sockets closed by the server: {r['closes']}", file=sys.stderr)
        if r["error_count"]:
            print(f"{side}: {r['error_count']} clients failed, e.g. {r['errors'][0]}",
                  file=sys.stderr)  # fmt: skip
    return {
        "latencies": latencies,
        "frames": len(latencies),
        "frames_per_s": len(latencies) / steady,
        # Progress shown within a second of the update: what a watcher can use.
        "fresh_per_s": sum(1 for ms in latencies if ms <= FRESH_MS) / steady,
        "frames_per_cpu_s": len(latencies) / max(1e-3, daphne_cpu),
        "daphne_cpu_s": daphne_cpu,
        "steady_s": steady,
        "clients_cpu_s": sum(r["cpu_s"] for r in results),
        "lost": args.clients - sum(r["finals"] for r in results),
        "connect_s": connect_s,
        "rss": rss,
    }


def _row(figure: str, ours: str, peer: str, ratio: str, target: str, met: bool | None) -> dict:
    return {
        "figure": figure,
        "ours": ours,
        "peer": peer,
        "ratio": ratio,
        "target": target,
        "verdict": "" if met is None else verdict(met),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--sides", nargs="+", default=["ours", "peer"], choices=["ours", "peer"])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    token, session = django_with_user(ENV)
    sides = {side: run_side(side, args, token, session) for side in args.sides}
    for side, got in sides.items():
        print(
            f"{side}: p50 {percentile(got['latencies'], 50):.1f} ms, "
            f"p99 {percentile(got['latencies'], 99):.1f} ms, {got['frames_per_s']:.0f} frames/s "
            f"({got['fresh_per_s']:.0f} fresh), "
            f"{got['frames_per_cpu_s']:.0f} frames/daphne-CPU-s (daphne {got['daphne_cpu_s']:.1f} "
            f"CPU-s, clients {got['clients_cpu_s']:.1f} CPU-s in {got['steady_s']:.1f} s), "
            f"lost {got['lost']}",
            file=sys.stderr,
        )
    ours = sides["ours"]
    peer = sides.get("peer")
    p50, p99 = percentile(ours["latencies"], 50), percentile(ours["latencies"], 99)
    per_conn = (ours["rss"]["after"] - ours["rss"]["before"]) / args.clients
    lost = ours["lost"]
    shape = f"{args.clients} clients, {args.actions} actions at 10 Hz"
    rows = [
        _row(f"fan-out: {shape}, p50 / p99", f"{p50:.1f} / {p99:.1f} ms",
             "" if peer is None else f"{percentile(peer['latencies'], 50):.1f} / "
             f"{percentile(peer['latencies'], 99):.1f} ms", "",
             f"p99 ≤ {TARGET_P99_MS:.0f} ms", p99 <= TARGET_P99_MS),
        _row("fan-out: final states lost", str(lost),
             "" if peer is None else str(peer["lost"]), "", "0", lost == 0),
        _row("fan-out: daphne RSS per connection", f"{per_conn:.0f} KB", "", "",
             f"≤ {TARGET_KB:.0f} KB", per_conn <= TARGET_KB),
    ]  # fmt: skip
    peer_lines = ""
    if peer is not None:
        # The row ("frames/s / plain Channels groups, >= 3x") counts frames that
        # arrive within FRESH_MS of the update: a frame 40 s late shows a tab nothing it
        # can use, and the peer's backlog replays would otherwise count as delivery. All
        # frames, and frames per daphne CPU-second, are reported beside it, untargeted.
        fresh_peer = peer["fresh_per_s"]
        ratio = ours["fresh_per_s"] / fresh_peer if fresh_peer >= 0.5 else float("inf")
        rows.append(
            _row(f"fan-out frames/s arriving ≤ {FRESH_MS / 1000:.0f} s after the update, "
                 f"{shape} (peer: plain Channels groups, same daphne)",
                 f"{ours['fresh_per_s']:.0f}", f"{peer['fresh_per_s']:.0f}",
                 f"{ratio:.2f}×" if ratio != float("inf") else "∞ (the peer's are all late)",
                 f"≥ {TARGET_RATIO:.0f}×", ratio >= TARGET_RATIO)
        )  # fmt: skip
        rows.append(
            _row("fan-out frames/s, all (wall) / per daphne CPU-second",
                 f"{ours['frames_per_s']:.0f} / {ours['frames_per_cpu_s']:.0f}",
                 f"{peer['frames_per_s']:.0f} / {peer['frames_per_cpu_s']:.0f}",
                 f"{ours['frames_per_s'] / max(1e-9, peer['frames_per_s']):.2f}× / "
                 f"{ours['frames_per_cpu_s'] / max(1e-9, peer['frames_per_cpu_s']):.2f}×",
                 "", None)
        )  # fmt: skip
    for index, key in ((0, "fanout_p99"), (3, "fanout_frames")):  # issue 18's (run_all)
        if index < len(rows):
            rows[index].update(key=key, profile="py-spy")  # py-spy: BENCH_PROFILE above
    record("fanout", rows)
    for side, got in sides.items():
        lat = got["latencies"]
        peer_lines += (
            f"| {side} | {percentile(lat, 50):.1f} ms | {percentile(lat, 90):.1f} ms | "
            f"{percentile(lat, 99):.1f} ms | {got['frames_per_s']:.0f} | "
            f"{got['fresh_per_s']:.0f} | "
            f"{got['frames_per_cpu_s']:.0f} | {got['daphne_cpu_s']:.1f} s | "
            f"{got['clients_cpu_s']:.1f} s | {got['lost']} | {got['connect_s']:.1f} s |\n"
        )
    body = f"""
## Fan-out: {args.clients:,} WebSocket clients on one daphne process

`python bench/bench_fanout.py` — embedded default (in-memory layer, ThreadRunner) in one
daphne process; {args.actions} actions report progress at 10 Hz for {args.seconds:.0f} s;
{args.clients:,} WebSocket clients over TCP ({args.clients // args.actions} per action) in
{args.client_procs} load-generator processes of their own (bench/fanout_client.py, a
minimal RFC 6455 client), whose CPU is reported apart from the server's.

"ours" is the package's consumer (ownership check, one hub subscription per process and
action, newest-state coalescing); "peer" is plain Channels groups as celery-progress's
WebSocket mode uses them (bench/peer_consumers.py: each socket joins the action's group
and forwards every message). Same daphne settings, same tickers, same run, one after the
other. Frames per daphne CPU-second is the load-independent figure (the machine is shared);
daphne's CPU includes the {args.actions} ticking handlers, the same for both.

| side | p50 | p90 | p99 | frames/s | fresh frames/s | frames per daphne CPU-s \
| daphne CPU | clients CPU | final states lost | connect |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{peer_lines}
Ours: daphne RSS per connection {per_conn:.0f} KB ({ours["rss"]["before"] / 1024:.0f} → \
{ours["rss"]["after"] / 1024:.0f} MB), target ≤ {TARGET_KB:.0f} KB; p99 target ≤ \
{TARGET_P99_MS:.0f} ms.

Machine: {machine()}.
"""
    print(body)
    if not args.no_write:
        write_section("fanout", body)


if __name__ == "__main__":
    main()
