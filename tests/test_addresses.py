"""The client address anonymous limits count by: REMOTE_ADDR unless a proxy header is trusted."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from async_actions.addresses import client_address, normalize, scope_address

SPOOFED = {"HTTP_X_FORWARDED_FOR": "6.6.6.6", "REMOTE_ADDR": "198.51.100.7"}


def test_remote_addr_is_used_while_no_proxy_header_is_trusted() -> None:
    assert client_address(SPOOFED) == "198.51.100.7"


@override_settings(ASYNC_ACTIONS={"TRUSTED_PROXY_HEADER": "HTTP_X_FORWARDED_FOR"})
def test_trusted_header_gives_the_entry_the_proxy_appended_not_the_clients() -> None:
    meta = {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 7.7.7.7, 203.0.113.9", "REMOTE_ADDR": "10.0.0.2"}
    assert client_address(meta) == "203.0.113.9"


@override_settings(
    ASYNC_ACTIONS={"TRUSTED_PROXY_HEADER": "HTTP_X_FORWARDED_FOR", "TRUSTED_PROXY_COUNT": 2}
)
def test_proxy_count_takes_the_entry_that_many_from_the_right() -> None:
    meta = {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.9, 10.0.0.9", "REMOTE_ADDR": "10.0.0.2"}
    assert client_address(meta) == "203.0.113.9"
    # Past one proxy only: the leftmost entry is the one that proxy saw.
    assert client_address({**meta, "HTTP_X_FORWARDED_FOR": "203.0.113.5"}) == "203.0.113.5"


@pytest.mark.parametrize("header", [None, "", " , ", "not-an-address", "unknown"])
@override_settings(ASYNC_ACTIONS={"TRUSTED_PROXY_HEADER": "HTTP_X_REAL_IP"})
def test_a_missing_or_unreadable_header_falls_back_to_remote_addr(header: Any) -> None:
    meta: dict[str, Any] = {"REMOTE_ADDR": "198.51.100.7"}
    if header is not None:
        meta["HTTP_X_REAL_IP"] = header
    assert client_address(meta) == "198.51.100.7"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1:8080", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1%eth0", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2::/64", "2001:db8:1:2::/64"),  # as stored, passed on again
        ("2001:db8:1:2::/48", "2001:db8:1::/64"),
        ("192.0.2.1/32", "192.0.2.1"),
        ("192.0.2.0/24", ""),
        ("", ""),
        (None, ""),
        ("999.1.1.1", ""),
        ("<script>", ""),
    ],
)
def test_addresses_are_counted_as_ipv4_or_ipv6_64(value: Any, expected: str) -> None:
    assert normalize(value) == expected


def _ids(settings: dict[str, Any]) -> list[str]:
    with override_settings(ASYNC_ACTIONS=settings):
        return [message.id for message in run_checks() if message.id.startswith("async_")]


@pytest.mark.parametrize("header", ["X-Forwarded-For", "x_forwarded_for", 1, ["HTTP_X"]])
def test_proxy_header_not_in_meta_form_is_a_system_check_error(header: Any) -> None:
    assert _ids({"TRUSTED_PROXY_HEADER": header}) == ["async_actions.E060"]


@pytest.mark.parametrize(
    "key",
    [
        "MAX_ACTIVE_PER_OWNER",
        "MAX_ACTIVE_PER_ANONYMOUS_ADDRESS",
        "MAX_RUNNING_PER_OWNER",
        "TRUSTED_PROXY_COUNT",
    ],
)
@pytest.mark.parametrize("value", [0, -1, "10", 2.5, True])
def test_bad_limits_are_system_check_errors(key: str, value: Any) -> None:
    assert _ids({key: value}) == ["async_actions.E003"]


def test_a_running_cap_that_lets_one_owner_fill_the_pool_is_a_warning() -> None:
    assert _ids({"MAX_WORKERS": 4, "MAX_RUNNING_PER_OWNER": 4}) == ["async_actions.W060"]
    assert _ids({"MAX_WORKERS": 4, "MAX_RUNNING_PER_OWNER": 3}) == []
    assert _ids({"MAX_WORKERS": 4, "MAX_RUNNING_PER_OWNER": None}) == []  # deliberately off
    assert _ids({"MAX_WORKERS": 1}) == []  # one thread: nothing to share


SCOPE = {
    "type": "websocket",
    "client": ("10.0.0.2", 51000),
    "headers": [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"203.0.113.9")],
}


def test_a_sockets_address_is_its_peer_while_no_proxy_header_is_trusted() -> None:
    assert scope_address(SCOPE) == "10.0.0.2"
    assert scope_address({"type": "websocket", "headers": []}) == ""


@override_settings(ASYNC_ACTIONS={"TRUSTED_PROXY_HEADER": "HTTP_X_FORWARDED_FOR"})
def test_a_sockets_address_reads_the_trusted_header_as_a_request_does() -> None:
    """Repeated headers join with commas, as a request's META has them."""
    assert scope_address(SCOPE) == "203.0.113.9"
