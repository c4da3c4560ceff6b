"""Checks about what the pages need: static files (W092) and a default page (W091)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from async_actions.checks import check_default_action_page, check_static_files


def ids(**settings: object) -> list[str]:
    with override_settings(**settings):
        return [message.id for message in check_static_files()]


def test_debug_off_without_static_root_warns() -> None:
    assert ids(DEBUG=False, STATIC_ROOT=None) == ["async_actions.W092"]


@pytest.mark.parametrize(
    "settings",
    [
        {"DEBUG": True, "STATIC_ROOT": None},  # runserver / ASGIStaticFilesHandler serve it
        {"DEBUG": False, "STATIC_ROOT": "/srv/app/staticfiles"},  # collected, served
        {"DEBUG": False, "STATIC_ROOT": None, "STATIC_URL": "https://cdn.example.com/s/"},
    ],
)
def test_no_warning_when_something_can_serve_the_script(settings: dict) -> None:
    assert ids(**settings) == []


def test_a_default_action_page_that_names_no_url_warns() -> None:
    def check(page: str | None) -> list[str]:
        with override_settings(ASYNC_ACTIONS={"DEFAULT_ACTION_PAGE": page}):
            return [message.id for message in check_default_action_page()]

    assert check("async_actions:processing") == []  # mounted by the test URLs
    assert check(None) == []
    assert check("nowhere:processing") == ["async_actions.W091"]
    assert check("home") == ["async_actions.W091"]  # a URL, but none that takes a pk
