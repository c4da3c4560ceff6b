"""The demo's Celery app, set up as Celery's Django guide shows.

``celery -A example_project worker`` runs actions for the ``celery`` profile
(docs/deploy.md); settings named ``CELERY_*`` configure it, and
``autodiscover_tasks()`` finds ``async_actions.tasks``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
