"""The REST API: list, watch, start and cancel actions from programs.

Mount it with one line, ``path("api/", include("async_actions.api.urls"))``. It follows
the site's ``REST_FRAMEWORK`` authentication settings; see docs/api.md.
"""
