"""The example project's URLs plus the test views, each in its own namespace."""

from django.urls import include, path

from example_project.urls import urlpatterns as example_urlpatterns
from tests import views

urlpatterns = [
    *example_urlpatterns,
    path("t/echo/", include(views.EchoView.urls())),
    path("t/gate/", include(views.GateView.urls())),
    path("t/boom/", include(views.BoomView.urls())),
    path("t/user-error/", include(views.UserErrorView.urls())),
    path("t/upload/", include(views.UploadView.urls())),
    path("t/steps/", include(views.StepsView.urls())),
    path("t/exclusive/", include(views.ExclusiveView.urls())),
    path("t/shout/", include(views.ShoutView.urls())),
    path("t/members/", include(views.MembersOnlyView.urls())),
    path("t/later/", include(views.LaterView.urls())),
]
