"""The engine's own cost per action, embedded: CPU per no-op action, and start latency.

1. Our CPU per no-op action: ``service.start`` -> claim -> the handler -> finish, each
   run to the end in this one thread (a runner that only collects the dispatches), on
   the embedded default's SQLite file; ``time.process_time`` over the loop, then the
   same loop under cProfile, whose top entries go to docs/performance.md.
2. Thread runner, ``service.start()`` -> the handler's body, one at a time, p50.
3. HTTP: ``POST /api/actions/`` to an embedded daphne (SQLite, thread runner, token
   auth) -> the handler's body (it returns ``time.time()``), one at a time, p50.

Usage: python bench/bench_engine.py [--actions 300] [--starts 100] [--no-write]
Writes the bench:engine section of docs/performance.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    ROOT,
    collecting_runner,
    django_with_user,
    machine,
    percentile,
    record,
    spied,
    start_daphne,
    stop,
    top_entries,
    verdict,
    write_section,
)

TMP = Path(tempfile.mkdtemp(prefix="aa-bench-engine-"))
ENV = {
    **os.environ,
    "DJANGO_SETTINGS_MODULE": "bench.settings_peer",
    "DEMO_SQLITE_PATH": str(TMP / "db.sqlite3"),
    "DJANGO_DEBUG": "0",
    "PYTHONPATH": str(ROOT),
}
TARGET_CPU_MS = 2.0
TARGET_THREAD_MS = 1.0
TARGET_HTTP_MS = 5.0


def cpu_per_action(actions: int) -> tuple[float, str]:
    """CPU ms per no-op action through start, claim, handler and finish; and a profile."""
    from async_actions import executor, runners, service

    runner = collecting_runner()
    previous, runners._runner = runners._runner, runner

    def one(i: int) -> None:
        # Many visitors, as on a site: one owner's would wait for MAX_ACTIVE_PER_OWNER.
        result = service.start("demo.noop", {}, session_key=f"bench-{i}")
        assert result.ok, result
        assert executor.execute(runner.ids.pop(), runner=runner) == "succeeded"

    try:
        for i in range(30):
            one(i)  # warm: connection, caches, the statements
        started = time.process_time()
        for i in range(actions):
            one(i)
        cpu = (time.process_time() - started) / actions * 1000
        profile = cProfile.Profile()
        profile.enable()
        for i in range(actions):
            one(i)
        profile.disable()
    finally:
        runners._runner = previous
    return cpu, top_entries(profile)


def thread_start_to_body(starts: int) -> list[float]:
    """ms from before ``service.start()`` to the first line of the handler, thread runner."""
    import async_actions
    from async_actions import service
    from async_actions.handlers import handler

    arrived = threading.Event()
    body_at: list[float] = []

    @handler("bench.engine_stamp")
    def stamp(ctx: Any) -> None:
        body_at.append(time.perf_counter())
        arrived.set()

    async_actions.startup()  # the runner built and started outside the loop
    samples = []
    for i in range(starts + 10):
        arrived.clear()
        started = time.perf_counter()
        assert service.start("bench.engine_stamp", {}, session_key=f"t-{i}").ok
        if not arrived.wait(10):
            raise SystemExit("the handler did not run within 10 s")
        if i >= 10:  # warm-up: threads started, connections open
            samples.append((body_at[-1] - started) * 1000)
        time.sleep(0.01)  # let the action finish: measure the idle path
    return samples


def http_start_to_body(token: str, starts: int) -> list[float]:
    """ms from sending ``POST /api/actions/`` to an embedded daphne to the handler body."""
    daphne = start_daphne(ENV, TMP / "daphne.log")
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"{daphne.base}/api/actions/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def one() -> float:
        started = time.time()
        action = call("POST", "", {"handler": "bench.stamp", "request": {}})
        deadline = time.monotonic() + 30
        while not action.get("finished_at"):
            if time.monotonic() > deadline:
                raise SystemExit("the action did not finish within 30 s")
            time.sleep(0.005)
            action = call("GET", f"{action['id']}/")
        return (action["response"]["t"] - started) * 1000

    try:
        samples = [one() for _ in range(starts + 5)][5:]  # 5 to warm up
        if os.environ.get("BENCH_PROFILE"):  # a pass of its own: sampling slows daphne
            with spied(daphne.process.pid):
                for _ in range(starts):
                    one()
    finally:
        stop(daphne.process)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=300)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    token, _session = django_with_user(ENV)
    from django.conf import settings

    settings.LOGGING = {"version": 1}
    cpu, profile = cpu_per_action(args.actions)
    thread = thread_start_to_body(args.starts)
    http = http_start_to_body(token, args.starts)
    t50, h50 = percentile(thread, 50), percentile(http, 50)
    cprofile = f"cProfile of {args.actions} no-op actions in one thread, cumulative:\n{profile}"
    rows = [
        {
            "figure": "our own CPU per no-op action (start + claim + finish), embedded",
            "ours": f"{cpu:.2f} ms",
            "target": f"≤ {TARGET_CPU_MS:g} ms",
            "verdict": verdict(cpu <= TARGET_CPU_MS),
            "key": "cpu_per_action",
            "profile": cprofile,
        },
        {
            "figure": "thread runner, service.start() → handler body, p50",
            "ours": f"{t50:.2f} ms",
            "target": f"≤ {TARGET_THREAD_MS:g} ms",
            "verdict": verdict(t50 <= TARGET_THREAD_MS),
            "key": "thread_start",
            "profile": cprofile,  # the CPU row's: start, then claim and finish
        },
        {
            "figure": "HTTP POST /api/actions/ → handler body, embedded, p50",
            "ours": f"{h50:.1f} ms",
            "target": f"≤ {TARGET_HTTP_MS:g} ms",
            "verdict": verdict(h50 <= TARGET_HTTP_MS),
            "key": "http_start",
            "profile": "py-spy",  # daphne, a pass of its own after the measured one
        },
    ]
    record("engine", rows)
    body = f"""
## The engine's own cost per action, embedded

`python bench/bench_engine.py` — the embedded default (SQLite file, in-memory layer),
a no-op handler, {args.actions} actions and {args.starts} starts, one at a time.

| figure | result | target |
| --- | ---: | --- |
| our CPU per action: `service.start` + claim + handler + finish, in one thread | \
{cpu:.2f} ms | ≤ {TARGET_CPU_MS:g} ms ({rows[0]["verdict"]}) |
| thread runner, `service.start()` → handler body, p50 / p90 | \
{t50:.2f} / {percentile(thread, 90):.2f} ms | ≤ {TARGET_THREAD_MS:g} ms ({rows[1]["verdict"]}) |
| `POST /api/actions/` (daphne, token auth) → handler body, p50 / p90 | \
{h50:.1f} / {percentile(http, 90):.1f} ms | ≤ {TARGET_HTTP_MS:g} ms ({rows[2]["verdict"]}) |

The CPU figure is `time.process_time` of this process (its push and supervisor threads
included) over the loop, divided by the actions. Where it goes, the same loop under
cProfile (cumulative, top entries; profiling roughly doubles every figure):

```
{profile}
```

Machine: {machine()}.
"""
    print(body)
    if not args.no_write:
        write_section("engine", body)


if __name__ == "__main__":
    main()
