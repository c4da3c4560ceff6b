from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from example_project.demo import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("async_actions.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("reports/", include(views.ReportView.urls())),
]
