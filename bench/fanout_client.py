"""A load-generator process for bench/bench_fanout.py: many WebSocket clients, cheaply.

Run by the benchmark, several at once, so the clients' CPU is their own processes' (and
reported), not the server's or the benchmark's. The client speaks just enough of RFC
6455 over asyncio streams for the job (handshake, unmasked server frames, pong, close):
the ``websockets`` library costs several times more CPU per frame, which on a 2-core
machine is taken from the server being measured.

Protocol with the benchmark: argv is one JSON object (port, cookie, origin, paths,
go_file); the process prints ``connected`` once every client holds its socket, and at
the end one JSON line with what it measured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import struct
import sys
import time
from collections import Counter
from typing import Any

FINAL = (b'"succeeded"', b'"failed"', b'"cancelled"')


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # ms, progress frames stamped by the handler
        self.frames = 0
        self.finals = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.errors: list[str] = []
        self.handshakes = 0
        self.given_up = 0
        self.closes: Counter[int] = Counter()  # close codes of sockets the server closed


async def _handshake(port: int, path: str, cookie: str, origin: str) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    return reader, writer


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def _frames(reader: Any, writer: Any, tally: Tally, idle: float) -> Any:
    """Yield each text frame's payload; answer pings; stop at close, or after ``idle``
    seconds without a frame once the actions tick (``tally.first_at``)."""
    while True:
        try:
            head = await asyncio.wait_for(reader.readexactly(2), idle if tally.first_at else None)
        except TimeoutError:
            return  # the final state never came: counted as lost
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await reader.readexactly(length) if length else b""
        if opcode == 0x8:
            tally.closes[struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005] += 1
            return
        if opcode == 0x9:
            writer.write(_masked(0xA, payload))
            continue
        if opcode in (0x1, 0x0):
            yield payload


async def _watch(job: dict, path: str, tally: Tally, connected: asyncio.Semaphore) -> None:
    try:
        async with connected:
            reader, writer = await _handshake(job["port"], path, job["cookie"], job["origin"])
    finally:
        tally.handshakes += 1
    try:
        async for payload in _frames(reader, writer, tally, job.get("idle", 20.0)):
            now = time.time()
            tally.frames += 1
            if b'"t": ' in payload and b'"running"' in payload:
                data = json.loads(payload)["action"]["data"]
                tally.latencies.append((now - data["t"]) * 1000)
                tally.first_at = tally.first_at or now
                tally.last_at = now
            elif any(word in payload for word in FINAL):
                tally.finals += 1
                return
    finally:
        writer.close()


async def _main(job: dict) -> dict:
    tally = Tally()
    connected = asyncio.Semaphore(10)  # handshakes at a time, per process
    tasks = [asyncio.create_task(_watch(job, path, tally, connected)) for path in job["paths"]]
    while tally.handshakes < len(tasks):  # every handshake done (or failed)
        await asyncio.sleep(0.05)
    print("connected", flush=True)  # the benchmark lets the actions tick now
    # A socket whose final state never comes (the peer drops messages when a socket's
    # channel is full) is given up after the run's length plus a margin.
    _done, late = await asyncio.wait(tasks, timeout=job["limit"])
    for task in late:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    tally.errors = [
        repr(r)
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    tally.given_up = len(late)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "latencies": tally.latencies,
        "frames": tally.frames,
        "finals": tally.finals,
        "first_at": tally.first_at,
        "last_at": tally.last_at,
        "errors": tally.errors[:5],
        "error_count": len(tally.errors),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "closes": dict(tally.closes),
        "given_up": tally.given_up,
    }


if __name__ == "__main__":
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    print(json.dumps(asyncio.run(_main(json.loads(sys.argv[1])))), flush=True)
