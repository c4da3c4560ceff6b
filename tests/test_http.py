"""The OpStatus → HTTP table every surface (pages, admin, API) answers from."""

from __future__ import annotations

import pytest

from async_actions import http
from async_actions.service import OpStatus


def test_every_service_outcome_has_an_http_meaning() -> None:
    assert set(http.OUTCOMES) == set(OpStatus)


@pytest.mark.parametrize(
    ("status", "code", "http_status"),
    [
        (OpStatus.OK, "ok", 202),
        (OpStatus.NO_HANDLER, "no_handler", 400),
        (OpStatus.NOT_FOUND, "not_found", 404),
        (OpStatus.ACTION_COMPLETED, "finished", 409),
        (OpStatus.BUSY, "busy", 409),
        (OpStatus.LIMIT_REACHED, "limit_reached", 429),
        (OpStatus.SHUTDOWN_IN_PROGRESS, "shutdown", 503),
        (OpStatus.DB_FAILED, "unavailable", 503),
    ],
)
def test_outcome_gives_the_documented_status_and_code(
    status: OpStatus, code: str, http_status: int
) -> None:
    outcome = http.outcome(status)
    assert (outcome.status, outcome.code) == (http_status, code)
    assert str(outcome.message)


@pytest.mark.parametrize("status", [429, 503])
def test_statuses_to_retry_carry_retry_after(status: int) -> None:
    assert http.retry_headers(status) == {"Retry-After": str(http.RETRY_AFTER)}


@pytest.mark.parametrize("status", [200, 202, 400, 404, 409])
def test_other_statuses_carry_no_retry_after(status: int) -> None:
    assert http.retry_headers(status) == {}


def test_the_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        http.OUTCOMES[OpStatus.OK] = http.outcome(OpStatus.BUSY)  # type: ignore[index]
