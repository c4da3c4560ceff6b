"""The demo site. Its Celery app loads with Django, as Celery's Django guide says, so
the CeleryRunner in a web process sends through it (when Celery is installed)."""

from importlib.util import find_spec

if find_spec("celery") is not None:
    from example_project.celery import app as celery_app

    __all__ = ["celery_app"]
