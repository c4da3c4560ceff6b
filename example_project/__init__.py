"""The demo site.

Celery's Django guide loads the project's Celery app here, so web processes send through
it; the demo does so for its ``celery`` profile only, sparing the others Celery's import.
"""

import os

if os.environ.get("DEMO_PROFILE") == "celery":
    from example_project.celery import app as celery_app

    __all__ = ["celery_app"]
