"""The OpenAPI 3 schema of the actions API, served beside it by ``async_actions.api.urls``.

The schema describes this API's endpoints only, under the prefix the site mounted them
at, so a site that includes the API has its schema without a line of its own.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.response import Response

#: The last segment of the schema's route, after the include's prefix.
SCHEMA_ROUTE = "schema/"


class ActionSchemaView(SpectacularAPIView):
    """drf-spectacular's schema view, limited to ``api_patterns`` under the request's prefix."""

    api_patterns: list[Any] = []

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Response:
        match = request.resolver_match
        route = match.route if match is not None else SCHEMA_ROUTE
        prefix = route.removesuffix(SCHEMA_ROUTE)
        # Per request: the view instance is new each time, the class attribute untouched.
        self.patterns = [path(prefix, include(self.api_patterns))]
        return super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call,no-any-return]
