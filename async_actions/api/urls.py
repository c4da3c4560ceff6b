"""``path("api/", include("async_actions.api.urls"))`` mounts ``actions/`` under it."""

from __future__ import annotations

from rest_framework.routers import DefaultRouter

from async_actions.api.views import ActionViewSet

app_name = "async_actions_api"

router = DefaultRouter()
router.include_root_view = False
router.register("actions", ActionViewSet, basename="action")

urlpatterns = router.urls
