"""``{% async_action_progress action %}``: the live progress element for one action."""

from __future__ import annotations

from typing import Any

from django import template
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.utils import timezone
from django.utils.safestring import SafeString

from async_actions.conf import action_settings
from async_actions.models import Action
from async_actions.routing import WEBSOCKET_PATH

register = template.Library()


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
    element_context: dict[str, Any] = {
        "action": action,
        "percent_int": int(action.percent),
        "status_url": status_url or context.get("status_url", ""),
        "result_url": result_url or context.get("result_url", ""),
        "cancel_url": cancel_url or context.get("cancel_url", ""),
        "ws_path": ws_path or WEBSOCKET_PATH.format(id=action.pk),
        "poll_ms": int(float(action_settings.POLL_INTERVAL) * 1000),
        "elapsed": f"{elapsed:.1f}",
        "script_url": static("async_actions/progress.js"),
    }
    return render_to_string(
        "async_actions/progress_element.html", element_context, request=context.get("request")
    )
