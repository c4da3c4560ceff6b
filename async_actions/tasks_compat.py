"""Django's Tasks framework: ``django.tasks`` on Django 6, the ``django_tasks`` backport on 5.2.

The only place that knows which one is installed; everything else imports from here.
"""

from __future__ import annotations

from importlib.util import find_spec

if find_spec("django.tasks") is not None:  # Django >= 6.0
    from django.tasks import task, task_backends
    from django.tasks.exceptions import InvalidTaskBackend as InvalidTaskBackendError
    from django.tasks.exceptions import TaskResultDoesNotExist

    SOURCE = "django.tasks"
else:  # Django 5.2 with the django-tasks backport
    from django_tasks import task, task_backends  # type: ignore[no-redef, unused-ignore]
    from django_tasks.exceptions import (  # type: ignore[no-redef, unused-ignore]
        InvalidTaskBackendError,
        TaskResultDoesNotExist,
    )

    SOURCE = "django_tasks"

__all__ = ["SOURCE", "InvalidTaskBackendError", "TaskResultDoesNotExist", "task", "task_backends"]
