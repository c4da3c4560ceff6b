"""The Prometheus endpoint: mount it behind your own authentication.

It answers every request it gets: protect it the way you protect other internal pages
(a decorator such as ``staff_member_required``, a token check, or a proxy that only
lets your Prometheus in); docs/metrics.md shows each.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare
from django.utils.translation import gettext
from django.views.decorators.http import require_GET

try:
    import prometheus_client

    from async_actions.metrics.collectors import registry
except ImportError:  # the metrics extra is not installed: the views say so when called
    prometheus_client = None  # type: ignore[assignment]
    registry = None  # type: ignore[assignment]

MISSING = (
    'async_actions.metrics needs prometheus_client: pip install "django-async-actions[metrics]".'
)


def require_prometheus_client() -> None:
    """Raise ImproperlyConfigured, saying what to install, when prometheus_client is missing."""
    if prometheus_client is None:
        raise ImproperlyConfigured(MISSING)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Every async_actions metric in Prometheus' text format."""
    require_prometheus_client()
    return HttpResponse(
        prometheus_client.generate_latest(registry),
        content_type=prometheus_client.CONTENT_TYPE_LATEST,
    )


View = Callable[[HttpRequest], HttpResponse]


def bearer_token_required(token: str) -> Callable[[View], View]:
    """Let through only requests with ``Authorization: Bearer <token>`` (what Prometheus
    sends with ``authorization: {credentials: ...}`` in its scrape config); others get 401.

    An empty token is a configuration error, never an open endpoint.
    """
    if not token:
        raise ImproperlyConfigured("bearer_token_required needs a non-empty token.")
    expected = f"Bearer {token}"

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest) -> HttpResponse:
            given = request.headers.get("Authorization", "")
            if not constant_time_compare(given, expected):
                response = HttpResponse(gettext("Authentication required."), status=401)
                response["WWW-Authenticate"] = 'Bearer realm="metrics"'
                return response
            return view(request)

        return wrapped

    return decorator
