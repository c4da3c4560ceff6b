from django.urls import include, path

from example_project.urls import urlpatterns as demo_urlpatterns

urlpatterns = [
    *demo_urlpatterns,
    path("celery-progress/", include("celery_progress.urls")),
]
