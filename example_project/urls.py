from django.contrib import admin
from django.urls import include, path

from async_actions.views import ActionView
from example_project.demo import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("async_actions.api.urls")),  # actions/ and its schema/
    # Pages for actions started through the API or perform() (DEFAULT_ACTION_PAGE).
    path("actions/", include(ActionView.urls())),
    path("import/", include(views.ImportView.urls())),
    path("import/sample.csv", views.sample_csv, name="sample_csv"),
    path("reports/", include(views.ReportView.urls())),
    path("countdown/", include(views.CountdownView.urls())),
    path("sync/", include(views.FailingView.urls())),
    path("mine/", views.my_actions, name="my_actions"),
    path("mine/<uuid:pk>/status/", views.action_status, name="action_status"),
    path("mine/thumbnails/", views.start_thumbnails, name="start_thumbnails"),
]
