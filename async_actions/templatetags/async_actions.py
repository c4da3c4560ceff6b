"""``{% async_action_progress action %}``: the live progress element for one action."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.urls import get_script_prefix
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from async_actions.conf import action_settings
from async_actions.models import Action
from async_actions.paths import websocket_path

register = template.Library()


def script_strings() -> dict[str, str]:
    """What progress.js shows, in the active language; ``%s`` is filled in by the script.

    Handed to the element as a data attribute, so translations need no JavaScript
    catalog view and no extra request.
    """
    return {
        "pending": gettext("Waiting to start"),
        "running": gettext("Running"),
        "succeeded": gettext("Done"),
        "failed": gettext("Failed"),
        "cancelled": gettext("Cancelled"),
        "cancelling": gettext("Cancelling…"),
        "cancel": gettext("Cancel"),
        "queued": gettext("Queued"),
        "elapsed": gettext("Elapsed %s"),
        "eta": gettext("About %s left"),
        "not_found": gettext("This action was not found. It may have been removed."),
        "cancel_failed": gettext("Could not cancel: the server did not answer. Try again."),
    }


def scheduled_time(when: datetime | None) -> SafeString:
    """``<time>`` for a pending action's ``run_after``: the ISO instant for the page
    script, which shows it in the browser's own time zone, and as text (without the
    script) the time in the current Django time zone, with the zone's name. With
    ``USE_TZ`` off the stored time is naive in ``TIME_ZONE``; it is made aware there, so
    the script still gets an instant rather than a time it would read as the browser's."""
    if when is None:
        return SafeString('<time data-aa="schedule-time"></time>')
    if timezone.is_naive(when):
        when = timezone.make_aware(when, timezone.get_default_timezone())
    local = timezone.localtime(when)
    text = f"{formats.date_format(local, 'DATETIME_FORMAT')} {local.tzname() or ''}".strip()
    return format_html(
        '<time datetime="{}" data-aa="schedule-time">{}</time>', when.isoformat(), text
    )


@register.simple_tag(takes_context=True)
def async_action_progress(
    context: template.Context,
    action: Action,
    status_url: str | None = None,
    result_url: str | None = None,
    cancel_url: str | None = None,
    ws_path: str | None = None,
) -> SafeString:
    """Render ``<async-action-progress>``; URLs default to those the view put in the context.

    Pass them explicitly to show an action's progress on any page.
    """
    elapsed = 0.0
    if action.started_at is not None:
        elapsed = max(0.0, (timezone.now() - action.started_at).total_seconds())
    # Only a pending action waits for its time; a finished one may keep a stale value.
    run_after = action.run_after if action.status == Action.Status.PENDING else None
    element_context: dict[str, Any] = {
        "action": action,
        "run_after": run_after,
        "schedule_time": scheduled_time(run_after),
        "percent_int": int(action.percent),
        "status_url": status_url or context.get("status_url", ""),
        "result_url": result_url or context.get("result_url", ""),
        "cancel_url": cancel_url or context.get("cancel_url", ""),
        "ws_path": ws_path or websocket_path(action.pk, get_script_prefix()),
        "poll_ms": action_settings.poll_ms,
        "elapsed": f"{elapsed:.1f}",
        "script_url": static("async_actions/progress.js"),
        "strings_json": json.dumps(script_strings(), ensure_ascii=False),
    }
    return render_to_string(
        "async_actions/progress_element.html", element_context, request=context.get("request")
    )


def response_rows(response: Any) -> list[tuple[str, str, bool]]:
    """``(key, text, nested)`` per key of a JSON object: scalars as text, the rest as JSON.

    Strings show as they are, numbers, booleans and null as JSON spells them; a nested
    object or list is indented JSON (``nested`` True). Anything but a non-empty object
    has no rows.
    """
    if not isinstance(response, dict):
        return []
    rows = []
    for key, value in response.items():
        if isinstance(value, str):
            rows.append((str(key), value, False))
        elif isinstance(value, dict | list):
            rows.append((str(key), _indented(value), True))
        else:
            rows.append((str(key), json.dumps(value), False))
    return rows


def _indented(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@register.simple_tag
def async_action_response(response: Any) -> SafeString:
    """The response as a readable table of its keys, or as indented JSON.

    A handler returns JSON; a Python repr (``{'counted': 10}``) is no page for visitors.
    """
    return render_to_string(
        "async_actions/response.html",
        {"rows": response_rows(response), "text": _indented(response)},
    )


@register.simple_tag(takes_context=True)
def async_action_fallback(context: template.Context) -> SafeString:
    """The processing page's fallback for a page whose progress.js does not run.

    A ``<meta http-equiv="refresh">`` in the markup cannot be cancelled by a script
    once parsed, so the refresh stays in ``<noscript>`` and this inline script turns
    it on only when the element has not started. The nonce comes from Django's CSP
    context processor (``csp_nonce``) or django-csp (``request.csp_nonce``).
    """
    request = context.get("request")
    nonce = context.get("csp_nonce") or getattr(request, "csp_nonce", "")
    return render_to_string("async_actions/fallback.html", {"nonce": nonce})
