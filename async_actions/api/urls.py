"""``path("api/", include("async_actions.api.urls"))`` mounts ``actions/`` and ``schema/``."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from async_actions.api.schema import SCHEMA_ROUTE, ActionSchemaView
from async_actions.api.views import ActionViewSet

app_name = "async_actions_api"

router = DefaultRouter()
router.include_root_view = False
router.register("actions", ActionViewSet, basename="action")

urlpatterns = [
    *router.urls,
    # The OpenAPI 3 schema of the endpoints above (YAML; JSON with ?format=json).
    path(SCHEMA_ROUTE, ActionSchemaView.as_view(api_patterns=router.urls), name="schema"),
]
