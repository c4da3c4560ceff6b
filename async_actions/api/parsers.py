"""The API's one parser: DRF's JSON parser behind a size cap and a depth limit.

``json.loads`` recurses once per nesting level, so a 2 KB body of nested lists raised
RecursionError (a 500) inside DRF's parser. The body is read up to its size limit and
its depth scanned (see :func:`async_actions.payloads.check_text_depth`) before any
parsing, so too-deep or too-large JSON is a 400 or 413 with a readable message.
"""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from django.utils.translation import gettext
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ParseError

from async_actions.conf import action_settings
from async_actions.payloads import PayloadError, check_text_depth

#: Room for the envelope around ``request`` before a body counts as too large.
BODY_SLACK = 4096
#: Levels the envelope (the body object around ``request``) adds to the request's depth.
ENVELOPE_DEPTH = 1


class TooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def body_limit() -> int:
    """Largest body accepted, in bytes: ``MAX_REQUEST_BYTES`` plus the envelope."""
    return action_settings.MAX_REQUEST_BYTES + BODY_SLACK


class JSONParser(parsers.JSONParser):
    """JSON bodies up to :func:`body_limit` bytes, nested at most ``MAX_JSON_DEPTH``.

    The depth counts from ``request``, like every other entrance: the body object
    around it is one level more.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        limit = body_limit()
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise TooLarge(f"The body is over {limit} bytes, the limit.")
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        try:
            text = raw.decode(encoding)
        except (LookupError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        depth = action_settings.MAX_JSON_DEPTH
        try:
            check_text_depth(text, "The body", limit=depth + ENVELOPE_DEPTH)
        except PayloadError:
            raise ParseError(
                {
                    "detail": gettext(
                        "The body is nested too deeply: its request may nest lists and objects "
                        "at most %(depth)s levels (ASYNC_ACTIONS['MAX_JSON_DEPTH'])."
                    )
                    % {"depth": depth},
                    "code": "too_deep",
                }
            ) from None
        return super().parse(io.BytesIO(raw), media_type, parser_context)
