"""bench/run_all.py's summary: issue 18's rows first and in order, verdicts, skipped and
failed benchmarks, rows without a peer, and the profiles of missed targets.

Fed with result files a real (tiny) run of bench_engine, bench_fanout and bench_latency
recorded (tests/data/bench_results: ``BENCH_RESULTS=... python bench/bench_engine.py
--actions 20 --starts 5 --no-write`` with ``BENCH_PROFILE`` set, and the like); no
benchmark runs here.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

# The wheel's test session (noxfile: package) copies tests/ without bench/.
pytest.importorskip("bench", reason="bench/ is not beside the tests")

from bench import _common, run_all

RESULTS = Path(__file__).resolve().parent / "data" / "bench_results"
SKIPPED = "skipped: nothing listens on 127.0.0.1:[5432]"
FAILED = "failed: bench/bench_vs_celery.py exited with 1"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    for path in RESULTS.iterdir():
        shutil.copy(path, tmp_path)
    return tmp_path


def _collect(results: Path) -> tuple[list[dict], list[dict]]:
    return run_all.collect(
        results, {"scaleout": SKIPPED, "celery_runner": SKIPPED, "vs_celery": FAILED}
    )


def test_issue_rows_come_in_the_issues_order_with_its_targets(results: Path) -> None:
    issue, _others = _collect(results)
    assert [row["number"] for row in issue] == list(range(1, 10))
    assert [row["target"] for row in issue] == [
        "≤ 2 ms", "≥ 0.8×", "≥ 0.7×", "≤ 1.5×", "≤ 1 ms", "≤ 5 ms", "≥ 1.5×", "≤ 100 ms", "≥ 3×",  # noqa: RUF001
    ]  # fmt: skip
    assert [row["bench"] for row in issue] == [
        "engine", "scaleout", "celery_runner", "scaleout", "engine", "engine", "vs_celery",
        "fanout", "fanout",
    ]  # fmt: skip
    assert issue[0]["figure"].startswith("1. our own CPU per no-op action")
    recorded = {
        row.get("key"): row for name in ("engine", "fanout") for row in _rows(results, name)
    }
    assert issue[0]["ours"] == recorded["cpu_per_action"]["ours"]
    assert issue[8]["ratio"] == recorded["fanout_frames"]["ratio"]
    assert issue[8]["peer"] == recorded["fanout_frames"]["peer"] != ""


def test_verdicts_follow_the_figures_and_unmeasured_rows_say_why(results: Path) -> None:
    issue, _others = _collect(results)
    for row in issue[0], issue[4], issue[5]:  # engine: absolute targets in ms
        limit = float(row["target"].split()[1])
        assert row["verdict"] == ("met" if float(row["ours"].split()[0]) <= limit else "MISSED")
    assert issue[1]["verdict"] == issue[2]["verdict"] == issue[3]["verdict"] == SKIPPED
    assert issue[6]["verdict"] == FAILED
    assert "ours" not in issue[1]
    # A benchmark that ran without recording the row: said, not left blank.
    issue, _others = run_all.collect(results, {})
    assert issue[2]["verdict"] == "not recorded by bench/celery_runner (celery_throughput)"


def test_other_rows_follow_in_the_benchmarks_order(results: Path) -> None:
    _issue, others = _collect(results)
    assert [row["bench"] for row in others] == ["latency", "fanout", "fanout", "fanout"]
    assert not any(row.get("key") for row in others)
    assert others[0]["verdict"] == "met"


def test_the_table_leaves_a_missing_peer_empty(results: Path) -> None:
    issue, others = _collect(results)
    lines = run_all.table(issue)
    assert len(lines) == 2 + 9
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[0].startswith("1. our own CPU")
    assert cells[2] == cells[3] == ""  # no peer, no ratio: an absolute target
    assert cells[4:] == ["≤ 2 ms", issue[0]["verdict"]]
    skipped = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert skipped[1:4] == ["", "", ""] and skipped[5] == SKIPPED
    assert all(line.count(" | ") == 5 for line in run_all.table(others)[2:])


def test_missed_targets_get_their_profile(results: Path) -> None:
    issue, _others = _collect(results)
    missed = [row for row in issue if row.get("verdict") == "MISSED"]
    text = "\n".join(run_all.profiles(issue, results))
    assert text.count("### ") == len(missed) > 0
    for row in missed:
        assert f"### {row['figure']}: missed" in text
    assert "2. no-op throughput" not in text  # skipped rows have no profile
    blocks = dict(_blocks(text))
    # The recorded tiny run met the CPU target and missed these.
    assert [row["number"] for row in missed] == [5, 6, 8, 9]
    assert issue[0]["verdict"] == "met" and issue[0]["figure"] not in blocks
    http = blocks[issue[5]["figure"]]
    assert "py-spy, bench/bench_engine.py: daphne serving POST" in http  # its own pass
    assert "samples of threads py-spy saw as active" in http
    assert "(async_actions/service.py)" in http  # where our start spends it
    thread = blocks[issue[4]["figure"]]  # the CPU loop's cProfile: start, claim, finish
    assert "cProfile of 20 no-op actions" in thread and "ncalls" in thread
    p99 = blocks[issue[7]["figure"]]
    assert "no py-spy recording" in p99  # no fanout.spy among the results: said so
    frames = blocks[issue[8]["figure"]]
    assert frames.strip() == "The same profile as for row 8 above."


def test_the_py_spy_summary_leaves_waits_out_of_the_functions(results: Path) -> None:
    text = _common.spy_summary(results / "engine.spy")
    samples = sum(int(line.rpartition(" ")[2]) for line in (results / "engine.spy").open())
    assert text.startswith(f"{samples} samples")
    functions = text.split("functions, self", 1)[1].split("our functions", 1)[0]
    assert "Condition.wait" not in functions and "EpollSelector.select" not in functions
    assert "waiting (select, Condition.wait, sleep)" in text
    ours = text.split("our functions, total (anywhere on the stack):\n", 1)[1]
    assert ours.strip() and all("async_actions/" in line for line in ours.strip().splitlines())


def test_rows_select_the_benchmarks_behind_them() -> None:
    def selected(**kw: list[str] | None) -> set[str]:
        return run_all._selected(argparse.Namespace(**{"only": None, "rows": None, **kw}))

    assert selected(rows=["status_rps", "fanout_p99"]) == {"vs_celery", "fanout"}
    assert selected(only=["latency"], rows=["start_cost"]) == {"latency", "scaleout"}
    assert selected() == {name for name, *_ in run_all.BENCHES}
    with pytest.raises(SystemExit, match="no row 'status'"):
        selected(rows=["status"])
    with pytest.raises(SystemExit, match="no benchmark"):
        selected(only=["nope"])


def test_the_profiles_section_sits_after_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n<!-- bench:engine -->\nold\n<!-- /bench:engine -->\n")
    monkeypatch.setattr(_common, "DOC", doc)
    _common.write_section("summary", "S1")
    _common.write_section("profiles", "P1", after="summary")
    _common.write_section("profiles", "P2", after="summary")
    assert doc.read_text() == (
        "# Performance\n\n<!-- bench:summary -->\nS1\n<!-- /bench:summary -->\n\n"
        "<!-- bench:profiles -->\nP2\n<!-- /bench:profiles -->\n\n"
        "<!-- bench:engine -->\nold\n<!-- /bench:engine -->\n"
    )


def _rows(results: Path, name: str) -> list[dict]:
    return json.loads((results / f"{name}.json").read_text())


def _blocks(text: str) -> list[tuple[str, str]]:
    """(figure, body) of each ``### figure: missed (...)`` block."""
    out = []
    for chunk in text.split("### ")[1:]:
        head, _, body = chunk.partition("\n")
        out.append((head.split(": missed", 1)[0], body))
    return out
