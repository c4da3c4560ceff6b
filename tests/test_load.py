"""Load, the CI variant: 40 actions started at once through the API with progress, 100
WebSocket watchers, on a real daphne. bench/bench_load.py runs it (the full variant,
200 actions and 500 watchers, is part of make bench and docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.slow


def test_every_action_ends_every_watcher_sees_it_and_nothing_answers_5xx(tmp_path: Path):
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, "bench/bench_load.py", "--actions", "40", "--clients", "100",
         "--seconds", "8", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.exists(), done.stdout + done.stderr
    outcome = json.loads(out.read_text())
    assert outcome["start_statuses"] == [201], outcome
    assert outcome["terminal"] == 40, outcome
    assert outcome["left_running"] == 0, outcome
    assert outcome["clients_saw_final"] == 100, outcome
    assert outcome["client_errors"] == 0, outcome
    assert outcome["server_5xx_in_log"] == 0, outcome
    assert done.returncode == 0, done.stdout + done.stderr
