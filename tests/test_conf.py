"""The settings table in conf.py: typed values, reload, generated checks, the docs page."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from async_actions.checks import check_settings
from async_actions.conf import DEFAULTS, ActionSettings, Setting, action_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
ROW = re.compile(r"^\| `([A-Z_]+)` \| (.+?) \|", re.MULTILINE)


def documented() -> dict[str, str]:
    """Key -> the default column of every row in docs/settings.md's tables."""
    return dict(ROW.findall(DOCS.read_text()))


def as_documented(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, timedelta) and value.seconds == 0 and not value.microseconds:
        return f"timedelta(days={value.days})"
    return repr(value)


def test_every_setting_is_documented_with_its_default() -> None:
    docs = documented()
    for setting in ActionSettings.table():
        assert setting.name in docs, f"{setting.name} is missing from docs/settings.md"
        assert docs[setting.name] == f"`{as_documented(setting.default)}`", setting.name


def test_docs_name_no_setting_that_does_not_exist() -> None:
    assert set(documented()) - set(DEFAULTS) == set()


def test_every_row_has_a_rule_a_doc_line_and_a_stable_check_id() -> None:
    for setting in ActionSettings.table():
        assert setting.doc and setting.rule.expected, setting.name
        assert re.fullmatch(r"async_actions\.E0\d\d", setting.check_id), setting.name
        assert setting.rule.accepts(setting.default), f"{setting.name}'s default is invalid"


def test_reading_a_setting_returns_its_type_without_a_cast() -> None:
    with override_settings(
        ASYNC_ACTIONS={"MAX_WORKERS": 3, "PUSH_INTERVAL": 1, "RETENTION": 60, "TIME_LIMIT": 2}
    ):
        assert action_settings.MAX_WORKERS == 3
        assert isinstance(action_settings.PUSH_INTERVAL, float)
        retention = action_settings.RETENTION
        assert retention == timedelta(seconds=60)
        assert isinstance(action_settings.TIME_LIMIT, float)
        assert action_settings.SWEEP_INTERVAL is None


def test_override_settings_reloads_the_cached_values() -> None:
    before = action_settings.MAX_WORKERS
    with override_settings(ASYNC_ACTIONS={"MAX_WORKERS": before + 5}):
        during = action_settings.MAX_WORKERS
    after = action_settings.MAX_WORKERS
    assert (during, after) == (before + 5, before)


def test_sweep_interval_is_half_of_stale_after_unless_set() -> None:
    with override_settings(ASYNC_ACTIONS={"STALE_AFTER": 30}):
        assert action_settings.sweep_interval == 15.0
        assert action_settings.stale_after == timedelta(seconds=30)
    with override_settings(ASYNC_ACTIONS={"STALE_AFTER": 30, "SWEEP_INTERVAL": 4}):
        assert action_settings.sweep_interval == 4.0


def test_a_value_that_cannot_be_converted_raises_improperly_configured() -> None:
    with (
        override_settings(ASYNC_ACTIONS={"MAX_WORKERS": "many"}),
        pytest.raises(ImproperlyConfigured, match="MAX_WORKERS"),
    ):
        action_settings.MAX_WORKERS  # noqa: B018


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NOT_A_SETTING"):
        action_settings.NOT_A_SETTING  # noqa: B018


def test_the_class_attribute_is_the_table_row() -> None:
    assert isinstance(ActionSettings.MAX_WORKERS, Setting)
    assert ActionSettings.MAX_WORKERS.name == "MAX_WORKERS"


@pytest.mark.parametrize(
    ("key", "value", "check_id"),
    [
        ("MAX_WORKERS", 0, "async_actions.E003"),
        ("PUSH_INTERVAL", -1, "async_actions.E003"),
        ("SHUTDOWN_GRACE", "soon", "async_actions.E003"),
        ("RETENTION", 0, "async_actions.E003"),
        ("TASKS_QUEUE", "", "async_actions.E003"),
        ("MAX_SOCKETS_PER_OWNER_ACTION", 0, "async_actions.E030"),
        ("CLAIM_SESSION_ACTIONS_ON_LOGIN", "yes", "async_actions.E040"),
        ("TRUSTED_PROXY_HEADER", "X-Forwarded-For", "async_actions.E060"),
        ("MAX_JSON_DEPTH", 501, "async_actions.E070"),
    ],
)
def test_checks_are_generated_from_the_table(key: str, value: Any, check_id: str) -> None:
    with override_settings(ASYNC_ACTIONS={key: value}):
        messages = [m for m in check_settings() if key in m.msg]
    assert [m.id for m in messages] == [check_id]
    assert f"is {value!r}; it must be" in messages[0].msg
    assert messages[0].hint


def test_proxy_header_hint_suggests_the_meta_spelling() -> None:
    with override_settings(ASYNC_ACTIONS={"TRUSTED_PROXY_HEADER": "X-Real-IP"}):
        (message,) = [m for m in check_settings() if m.id == "async_actions.E060"]
    assert "'HTTP_X_REAL_IP'" in message.hint
