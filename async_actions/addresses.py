"""The client address a start is counted by: ``REMOTE_ADDR``, or a trusted proxy's header.

Anonymous limits cannot count by session (a client that drops its cookie is a new
session per request), so they count by address. The address is only as good as its
source: ``REMOTE_ADDR`` is the peer of the server socket, which is the proxy when
there is one, so ``TRUSTED_PROXY_HEADER`` names the header that proxy sets. Proxies
append the address they saw to the right of ``X-Forwarded-For`` and pass on whatever
the client sent to the left of it, so only the entries the trusted proxies appended can
be believed: the one ``TRUSTED_PROXY_COUNT`` places from the right.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from async_actions.conf import action_settings

#: IPv6 clients commonly hold a whole /64, so they are counted by it.
IPV6_PREFIX = 64


def normalize(value: Any) -> str:
    """``value`` as the address limits count by ("" when it is not an IP address).

    IPv4 addresses stay as they are (IPv4-mapped IPv6 becomes IPv4); an IPv6 address
    becomes its /64 network. A port (``1.2.3.4:80``, ``[2001:db8::1]:80``) is dropped.
    """
    text = str(value or "").strip()
    if "/" in text:  # a stored IPv6 /64 (or an IPv4 /32), passed on again
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            return ""
        if network.prefixlen != network.max_prefixlen and network.version == 4:
            return ""
        text = str(network.network_address)
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # no zone id
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/{IPV6_PREFIX}", strict=False))
    return str(address)


def client_address(meta: dict[str, Any]) -> str:
    """The client's address for a request's ``META`` ("" when unknown).

    With ``TRUSTED_PROXY_HEADER`` set and present, its entry ``TRUSTED_PROXY_COUNT``
    places from the right (the leftmost when the chain is shorter, i.e. the request
    came past fewer proxies); a missing or unreadable header falls back to
    ``REMOTE_ADDR``, the peer that really connected.
    """
    header = action_settings.TRUSTED_PROXY_HEADER
    if header:
        entries = [entry.strip() for entry in str(meta.get(header) or "").split(",")]
        entries = [entry for entry in entries if entry]
        if entries:
            count = action_settings.TRUSTED_PROXY_COUNT
            address = normalize(entries[max(0, len(entries) - count)])
            if address:
                return address
    return normalize(meta.get("REMOTE_ADDR"))


def scope_address(scope: dict[str, Any]) -> str:
    """The client's address for an ASGI ``scope`` (a WebSocket's), as for a request.

    Builds the part of ``META`` :func:`client_address` reads: ``REMOTE_ADDR`` from the
    scope's ``client`` and the headers as Django names them (``HTTP_X_FORWARDED_FOR``).
    """
    client = scope.get("client") or ()
    meta: dict[str, Any] = {"REMOTE_ADDR": client[0] if client else ""}
    for name, value in scope.get("headers") or ():
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        value_text = value.decode("latin-1")
        meta[key] = f"{meta[key]},{value_text}" if key in meta else value_text
    return client_address(meta)
