"""The example project's URLs plus the test views, each in its own namespace."""

from django.contrib.admin.views.decorators import staff_member_required
from django.urls import include, path

from async_actions.metrics.views import bearer_token_required, metrics
from example_project.urls import urlpatterns as example_urlpatterns
from tests import views

#: The token tests/test_metrics.py scrapes with (docs/metrics.md's setup).
METRICS_TOKEN = "test-scrape-token"

urlpatterns = [
    *example_urlpatterns,
    path("t/echo/", include(views.EchoView.urls())),
    path("t/gate/", include(views.GateView.urls())),
    path("t/boom/", include(views.BoomView.urls())),
    path("t/user-error/", include(views.UserErrorView.urls())),
    path("t/upload/", include(views.UploadView.urls())),
    path("t/late-upload/", include(views.LateUploadView.urls())),
    path("t/export/", include(views.ExportView.urls())),
    path("t/pair/", include(views.PairUploadView.urls())),
    path("t/steps/", include(views.StepsView.urls())),
    path("t/exclusive/", include(views.ExclusiveView.urls())),
    path("t/shout/", include(views.ShoutView.urls())),
    path("t/members/", include(views.MembersOnlyView.urls())),
    # docs/metrics.md, "Protect the endpoint": a token for Prometheus, or staff only.
    path("t/metrics/", bearer_token_required(METRICS_TOKEN)(metrics)),
    path("t/metrics-staff/", staff_member_required(metrics)),
    path("t/summary/", include(views.SummaryView.urls())),
    path("t/later/", include(views.LaterView.urls())),
]
