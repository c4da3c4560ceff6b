"""``path("metrics/", include("async_actions.metrics.urls"))``, wrapped in your own auth.

Including this module without ``prometheus_client`` installed raises
ImproperlyConfigured as the URLconf loads, so the mistake shows at start, not at the
first scrape.
"""

from __future__ import annotations

from django.urls import path

from async_actions.metrics.views import metrics, require_prometheus_client

require_prometheus_client()

app_name = "async_actions_metrics"
urlpatterns = [path("", metrics, name="metrics")]
