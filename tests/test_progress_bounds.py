"""Bounds on what a handler reports: percent is a real number, the log is bounded in bytes.

Before: ``set_progress("50")`` and ``set_progress(True)`` passed through ``float()``
and were stored as 50 and 1; a noisy handler kept megabytes of log on one action,
because the log was bounded by its number of records (LOG_LIMIT) only.
"""

from __future__ import annotations

import decimal
import fractions
import json
from typing import Any

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

from async_actions import service
from async_actions.context import ActionContext
from async_actions.handlers import handler
from async_actions.models import Action
from async_actions.progress import ActionLog, ProgressError
from tests.helpers import wait_finished

#: Values ``tests.bounds.percent`` reports, by the name in its request (most are not JSON).
PERCENTS: dict[str, Any] = {
    "string": "50",
    "empty string": "",
    "bytes": b"50",
    "true": True,
    "false": False,
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "decimal nan": decimal.Decimal("NaN"),
    "signalling nan": decimal.Decimal("sNaN"),
    "complex": complex(50, 0),
    "list": [50],
    "huge int": 10**400,
    "negative": -1,
    "over 100": 100.5,
}
ACCEPTED: dict[str, Any] = {
    "int": 50,
    "float": 49.5,
    "zero": 0,
    "hundred": 100,
    "decimal": decimal.Decimal("12.5"),
    "fraction": fractions.Fraction(1, 4),
}


@handler("tests.bounds.percent")
def report_percent(ctx: ActionContext) -> None:
    ctx.set_progress({**PERCENTS, **ACCEPTED}[ctx.request["value"]], "reported")


@handler("tests.bounds.log")
def log_lines(ctx: ActionContext) -> None:
    for i in range(ctx.request["count"]):
        ctx.log.info("%d %s", i, ctx.request["text"] * ctx.request["repeat"])


def started(name: str, request: Any) -> Action:
    result = service.start(name, request)
    assert result.action is not None
    return wait_finished(result.action.pk)


def log_bytes(log: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(entry)) for entry in log)


# -- percent ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", sorted(PERCENTS))
def test_set_progress_refuses_a_percent_that_is_not_a_real_number_from_0_to_100(
    runner: Any, name: str
):
    action = started("tests.bounds.percent", {"value": name})
    assert action.status == "failed"
    assert "percent must be a number from 0 to 100" in action.error
    assert action.percent == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_set_progress_accepts_real_numbers(runner: Any, name: str):
    action = started("tests.bounds.percent", {"value": name})
    assert action.status == "succeeded", action.error
    assert action.message == "reported"


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(PERCENTS))
def test_update_progress_from_outside_refuses_the_same_values(name: str):
    action = service.start("tests.echo", {}).action
    assert action is not None
    with pytest.raises(ProgressError, match="percent must be a number"):
        service.update_progress(action.pk, PERCENTS[name], "not stored")
    action.refresh_from_db()
    assert (action.percent, action.message, action.seq) == (0, "", 0)


@pytest.mark.django_db
def test_none_leaves_percent_unchanged():
    action = service.start("tests.echo", {}).action
    assert action is not None
    assert service.update_progress(action.pk, 40) is service.OpStatus.OK
    assert service.update_progress(action.pk, None, "still 40") is service.OpStatus.OK
    action.refresh_from_db()
    assert (action.percent, action.message) == (40, "still 40")


@pytest.mark.django_db
def test_a_huge_progress_message_is_cut_to_max_message_length():
    action = service.start("tests.echo", {}).action
    assert action is not None
    service.update_progress(action.pk, 1, "x" * 1_000_000)
    action.refresh_from_db()
    assert action.message == "x" * 1_000


# -- the log ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_noisy_handler_keeps_at_most_log_limit_bytes_of_log_newest_last(runner: Any):
    # 200 records of 10,000 characters: 2 MB before, with LOG_LIMIT (200) the only bound.
    action = started("tests.bounds.log", {"count": 200, "text": "x", "repeat": 9_990})
    assert action.status == "succeeded", action.error
    assert log_bytes(action.log) <= 65_536
    assert len(action.log) == 6
    assert action.log[-1]["message"].startswith("199 x")
    assert [int(entry["message"].split()[0]) for entry in action.log] == list(range(194, 200))


@pytest.mark.django_db(transaction=True)
def test_many_small_records_are_still_bounded_by_log_limit_entries(runner: Any):
    action = started("tests.bounds.log", {"count": 500, "text": "y", "repeat": 1})
    assert len(action.log) == 200
    assert action.log[0]["message"] == "300 y"
    assert log_bytes(action.log) <= 65_536


@pytest.mark.django_db(transaction=True)
def test_one_record_over_the_byte_limit_is_kept_truncated(runner: Any):
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "LOG_LIMIT_BYTES": 4096}):
        # Astral characters take 12 bytes each as stored JSON: 10,000 of them is 120 KB.
        action = started("tests.bounds.log", {"count": 1, "text": "\U0001f600", "repeat": 10_000})
    assert action.status == "succeeded", action.error
    [entry] = action.log
    assert entry["message"].startswith("0 \U0001f600")
    assert entry["message"].endswith(" [truncated]")
    assert 4096 - 12 < log_bytes(action.log) <= 4096


def test_action_log_drops_oldest_by_bytes_and_by_count():
    log = ActionLog([], max_entries=3, max_bytes=200)
    for i in range(5):
        log.append({"time": i, "level": "INFO", "message": f"m{i}"})
    assert [entry["message"] for entry in log] == ["m2", "m3", "m4"]
    log.append({"time": 5, "level": "INFO", "message": "z" * 100})
    assert [entry["message"][:2] for entry in log] == ["m4", "zz"]
    assert log.bytes == log_bytes(list(log)) <= 200


def test_a_stored_log_over_the_bounds_is_trimmed_when_a_retry_picks_it_up():
    stored = [{"time": i, "level": "INFO", "message": "w" * 1000} for i in range(100)]
    log = ActionLog(stored, max_entries=200, max_bytes=10_000)
    assert len(log) == 9
    assert [entry["time"] for entry in log] == list(range(91, 100))


def test_a_record_that_cannot_fit_at_all_keeps_only_the_marker():
    log = ActionLog([], max_entries=10, max_bytes=10)
    log.append({"time": 1, "level": "INFO", "message": "long" * 100})
    assert [entry["message"] for entry in log] == [" [truncated]"]


def test_a_tiny_log_limit_bytes_is_warned_about_and_zero_refused():
    with override_settings(ASYNC_ACTIONS={"LOG_LIMIT_BYTES": 100}):
        assert "async_actions.W070" in [m.id for m in run_checks()]
    with override_settings(ASYNC_ACTIONS={"LOG_LIMIT_BYTES": 0}):
        assert "async_actions.E003" in [m.id for m in run_checks()]
