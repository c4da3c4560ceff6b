"""What a request, response or progress data may hold: JSON every database can store.

``json.dumps`` accepts strings PostgreSQL's ``jsonb`` and ``text`` refuse (NUL
characters, lone surrogates). Checking here turns that into a clear error at the edge
instead of a database error after the action was half-updated.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PayloadError", "PayloadTooLarge", "check_payload", "clean_text"]


class PayloadError(TypeError, ValueError):
    """A value cannot be stored as an action's JSON; the message says why.

    Both a TypeError (not JSON) and a ValueError (bad content), so callers may catch
    either.
    """


class PayloadTooLarge(PayloadError):
    """The value is valid JSON but longer than its size limit (HTTP 413 at the edges)."""


def _bad_string(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL (\\u0000) character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate character"
    return None


def _walk(value: Any, what: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = _bad_string(item)
            if problem:
                raise PayloadError(f"{what} {problem}, which databases cannot store.")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def check_payload(
    value: Any, what: str, limit: int | None = None, setting: str | None = None
) -> str:
    """Return ``value`` as JSON text, or raise PayloadError naming ``what``.

    Refuses values that are not JSON, NaN and infinities, strings a database cannot
    store, and (with ``limit``) JSON longer than ``limit`` bytes.
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} must be JSON-serializable: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply.") from None
    _walk(value, what)
    if limit is not None and len(text) > limit:
        where = f" (ASYNC_ACTIONS['{setting}'])" if setting else ""
        raise PayloadTooLarge(f"{what} is {len(text)} bytes as JSON; the limit is {limit}{where}.")
    return text


def clean_text(value: Any, max_length: int | None = None) -> str:
    """``value`` as text a database can store: NULs and lone surrogates replaced."""
    text = str(value)
    if max_length is not None:
        text = text[:max_length]
    if _bad_string(text):
        text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text
