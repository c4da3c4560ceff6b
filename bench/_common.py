"""What every benchmark shares: percentiles, the machine line, and rewriting its own
section of docs/performance.md between ``<!-- bench:NAME -->`` markers, so each
benchmark can run alone and leave the other sections as they were."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; enough for the few thousand samples a bench takes."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )


def write_section(name: str, body: str) -> str:
    """Replace (or append) the section ``name`` of docs/performance.md; returns it."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = f"{start}\n{body.strip()}\n{end}"
    current = DOC.read_text() if DOC.exists() else "# Performance\n"
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(current)
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout}s")


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
