"""Load: N actions started at once through the API, with progress, watched by M WebSockets.

The embedded default in one daphne process (ThreadRunner with a pool as big as N, the
in-memory layer, SQLite). Actions are started by 20 concurrent API clients; each reports
progress at 5 Hz for a while; M WebSocket clients (spread over the actions)
watch until their action ends. Checked: every action reaches a terminal state, every
client sees its action's final state, no request answers 5xx.

Usage: python bench/bench_load.py [--actions 200] [--clients 500] [--json PATH]
tests/test_load.py runs a smaller variant in CI; the full one is part of make bench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    FINAL,
    ROOT,
    django_with_user,
    machine,
    percentile,
    record,
    start_daphne,
    stop,
    write_section,
)

TMP = Path(tempfile.mkdtemp(prefix="aa-bench-load-"))


def _env(actions: int) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings_load",
        "BENCH_MAX_WORKERS": str(actions + 10),
        "DEMO_SQLITE_PATH": str(TMP / "db.sqlite3"),
        "DJANGO_DEBUG": "0",
        "PYTHONPATH": str(ROOT),
    }


def _post(port: int, token: str, seconds: float) -> tuple[int, str | None]:
    body = {"handler": "bench.ticker", "request": {"hz": 5, "seconds": seconds}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/actions/",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["id"]
    except urllib.error.HTTPError as error:
        return error.code, None


async def _watch_all(port: int, session: str, ids: list[str], clients: int) -> dict:
    from websockets.asyncio.client import connect

    headers = {"Cookie": f"sessionid={session}", "Origin": f"http://127.0.0.1:{port}"}
    outcome = {"finals": 0, "errors": 0, "frames": 0}
    gate = asyncio.Semaphore(20)

    async def watch(pk: str) -> None:
        url = f"ws://127.0.0.1:{port}/ws/async-actions/{pk}/"
        try:
            async with gate:
                socket = await connect(url, additional_headers=headers, open_timeout=60)
            async with socket:
                while True:
                    event = json.loads(await asyncio.wait_for(socket.recv(), 120))["action"]
                    outcome["frames"] += 1
                    if event["status"] in FINAL:
                        outcome["finals"] += 1
                        return
        except Exception as exc:  # counted: a client that failed did not see its final
            outcome["errors"] += 1
            outcome.setdefault("first_error", repr(exc))

    await asyncio.gather(*(watch(ids[i % len(ids)]) for i in range(clients)))
    return outcome


def run(actions: int, clients: int, seconds: float) -> dict:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    env = _env(actions)
    token, session = django_with_user(env)
    server = start_daphne(env, TMP / "daphne.log")
    daphne, port = server.process, server.port
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            posts = list(pool.map(lambda _: _post(port, token, seconds), range(actions)))
        start_seconds = time.monotonic() - started
        ids = [pk for status, pk in posts if pk]
        watched = asyncio.run(_watch_all(port, session, ids, clients)) if ids else {}
        from async_actions.models import Action

        deadline = time.monotonic() + 120
        while Action.objects.filter(pk__in=ids, finished_at__isnull=True).exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        statuses = [status for status, _pk in posts]
        finished = Action.objects.filter(pk__in=ids, finished_at__isnull=False)
        durations = [
            (a.finished_at - a.created_at).total_seconds()
            for a in finished.only("created_at", "finished_at")
        ]
        log_text = (TMP / "daphne.log").read_text()
        server_errors = len(re.findall(r'^\S+ - - \[[^]]+\] "[A-Z]+ [^"]*" 5\d\d ', log_text, re.M))
        return {
            "actions": actions,
            "clients": clients,
            "started": len(ids),
            "start_5xx": sum(1 for s in statuses if s >= 500),
            "start_statuses": sorted(set(statuses)),
            "terminal": finished.count(),
            "left_running": Action.objects.filter(pk__in=ids, finished_at__isnull=True).count(),
            "clients_saw_final": watched.get("finals", 0),
            "client_errors": watched.get("errors", 0),
            "first_error": watched.get("first_error", ""),
            "frames": watched.get("frames", 0),
            "server_5xx_in_log": server_errors,
            "start_seconds": round(start_seconds, 2),
            "duration_p50_s": round(percentile(durations, 50), 2) if durations else None,
            "duration_max_s": round(max(durations), 2) if durations else None,
        }
    finally:
        stop(daphne)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=200)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", help="write the outcome here")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    outcome = run(args.actions, args.clients, args.seconds)
    print(json.dumps(outcome, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(outcome))
    ok = (
        outcome["terminal"] == args.actions
        and outcome["clients_saw_final"] == args.clients
        and outcome["start_5xx"] == 0
        and outcome["server_5xx_in_log"] == 0
    )
    record(
        "load",
        [
            {
                "figure": f"load: {args.actions} actions at once, {args.clients} watchers",
                "ours": f"{outcome['terminal']} terminal, {outcome['clients_saw_final']} "
                f"finals seen, {outcome['start_5xx'] + outcome['server_5xx_in_log']} 5xx",
                "peer": "",
                "ratio": "",
                "target": "all terminal, all finals seen, 0 5xx",
                "verdict": "met" if ok else "MISSED",
            }
        ],
    )
    if not args.no_write and not args.json:
        write_section(
            "load",
            f"""
## Load: {args.actions} actions at once, {args.clients} WebSocket watchers

`python bench/bench_load.py` — embedded default in one daphne process (a pool as big as
the load, in-memory layer, SQLite). 20 API clients start {args.actions} actions at once;
each reports progress at 5 Hz for {args.seconds:.0f} s; {args.clients} WebSocket clients watch.

| figure | result | target |
| --- | ---: | --- |
| actions started (API answers) | {outcome["started"]} ({outcome["start_statuses"]}) | all, no 5xx |
| actions in a terminal state at the end | {outcome["terminal"]} | {args.actions} |
| clients that saw their action's final state | {outcome["clients_saw_final"]} | {args.clients} |
| client errors | {outcome["client_errors"]} | 0 |
| 5xx answers in the server log | {outcome["server_5xx_in_log"]} | 0 |
| time to start all (20 concurrent API clients) | {outcome["start_seconds"]} s | |
| action duration p50 / max (created → finished) | {outcome["duration_p50_s"]} / \
{outcome["duration_max_s"]} s | |

Verdict: {"met" if ok else "MISSED"}. Machine: {machine()}.
""",
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
