"""What a request, response or progress data may hold: JSON every database can store.

``json.dumps`` accepts strings PostgreSQL's ``jsonb`` and ``text`` refuse (NUL
characters, lone surrogates). Checking here turns that into a clear error at the edge
instead of a database error after the action was half-updated.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from async_actions.conf import action_settings
from async_actions.exceptions import PayloadError, PayloadTooLarge

__all__ = [
    "PayloadError",
    "PayloadTooLarge",
    "check_depth",
    "check_payload",
    "check_text_depth",
    "clean_text",
    "loads",
]

#: A JSON string (escapes included); brackets inside one are not structure. An
#: unterminated string runs to the end, so every quote matches and the scan stays linear.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
#: Everything that is not a bracket, once strings are gone.
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _bad_string(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL (\\u0000) character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate character"
    return None


def _walk(value: Any, what: str, limit: int, *, strings: bool) -> None:
    """Walk ``value`` one level at a time, without recursion: its depth and its strings.

    Stops at the first level past ``limit``, so neither a deep value nor a list that
    contains itself can raise RecursionError or loop; objects other than dicts, lists,
    tuples and sets count as leaves. With ``strings``, text a database refuses is too.
    """
    level = [value]
    depth = 0
    while level:
        below: list[Any] = []
        containers = False
        for item in level:
            if isinstance(item, str):
                problem = _bad_string(item) if strings else None
                if problem:
                    raise PayloadError(f"{what} {problem}, which databases cannot store.")
            elif isinstance(item, dict):
                containers = True
                below.extend(item.keys())
                below.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                containers = True
                below.extend(item)
        if containers:
            depth += 1
            if depth > limit:
                raise _too_deep(what, limit)
        level = below


def _depth_limit(limit: int | None) -> int:
    return action_settings.MAX_JSON_DEPTH if limit is None else limit


def _too_deep(what: str, limit: int) -> PayloadError:
    return PayloadError(
        f"{what} is nested more than {limit} levels deep (ASYNC_ACTIONS['MAX_JSON_DEPTH'])."
    )


def check_depth(value: Any, what: str, limit: int | None = None) -> None:
    """Raise PayloadError if ``value`` nests lists/dicts deeper than ``MAX_JSON_DEPTH``.

    Iterative, so a deep value cannot raise RecursionError here; ``json.dumps`` (which
    recurses) runs only on values this accepted. Other objects count as leaves.
    """
    _walk(value, what, _depth_limit(limit), strings=False)


def check_text_depth(text: str | bytes, what: str, limit: int | None = None) -> None:
    """Raise PayloadError if the JSON ``text`` nests deeper than ``MAX_JSON_DEPTH``.

    ``json.loads`` recurses once per level and raises RecursionError near 1,000, so
    text is scanned before it is parsed: strings are cut out by a regular expression,
    then brackets are counted. Both steps run in C, in time linear in the text.
    """
    limit = _depth_limit(limit)
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "replace")
    if text.count("[") + text.count("{") <= limit:
        return  # not enough brackets to be too deep: the common case costs two counts
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    deepest = max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)
    if deepest > limit:
        raise _too_deep(what, limit)


def loads(text: str | bytes, what: str, limit: int | None = None) -> Any:
    """Parse JSON ``text``; PayloadError (a ValueError) if it is invalid or too deep.

    Every JSON that enters from outside (API bodies, WebSocket frames, command-line
    options) is parsed here, so one depth rule holds at every entrance.
    """
    check_text_depth(text, what, limit)
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise PayloadError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # only with a MAX_JSON_DEPTH beyond what json can parse
        raise _too_deep(what, _depth_limit(limit)) from None


def check_payload(
    value: Any, what: str, limit: int | None = None, setting: str | None = None
) -> str:
    """Return ``value`` as JSON text, or raise PayloadError naming ``what``.

    Refuses values nested deeper than ``MAX_JSON_DEPTH``, values that are not JSON,
    NaN and infinities, strings a database cannot store, and (with ``limit``) JSON
    longer than ``limit`` bytes.
    """
    _walk(value, what, _depth_limit(None), strings=True)  # before json.dumps recurses
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} must be JSON-serializable: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what} is nested too deeply.") from None
    if limit is not None and len(text) > limit:
        where = f" (ASYNC_ACTIONS['{setting}'])" if setting else ""
        raise PayloadTooLarge(f"{what} is {len(text)} bytes as JSON; the limit is {limit}{where}.")
    return text


def clean_text(value: Any, max_length: int | None = None) -> str:
    """``value`` as text a database can store: NULs and lone surrogates replaced.

    Never raises: a value whose ``str()`` raises or is not text (a handler's exception
    or message object) becomes ``<unprintable TypeName>``.
    """
    try:
        text = str(value)
    except Exception:
        text = None
    if not isinstance(text, str):
        text = f"<unprintable {type(value).__name__}>"
    if max_length is not None:
        text = text[:max_length]
    if _bad_string(text):
        text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text
