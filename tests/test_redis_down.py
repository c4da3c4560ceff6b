"""Redis down: the channel layer fails, and nothing else does.

The layer is channels_redis pointed at a port nothing listens on. A visitor starts an
action through the view; it runs, its progress and result are stored, the pages and
the status JSON answer (the page's script falls back to polling that JSON when its
WebSocket closes with 4503), and no request gets a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from async_actions.models import Action
from async_actions.progress import pusher
from tests.actions import gate
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [("127.0.0.1", 1)]},  # nothing listens on port 1
        }
    }
    channel_layers.backends.clear()
    pusher.reset()
    yield
    channel_layers.backends.clear()
    pusher.reset()


def test_actions_run_and_pages_answer_while_redis_is_down(redis_down: None, runner: Any) -> None:
    failures_before = pusher.failures
    client = Client()
    gate("redis-down").set()
    response = client.post(reverse("steps_view:initial"), {"steps": "5", "gate": "redis-down"})
    assert response.status_code == 303
    processing = response["Location"]
    pk = processing.rstrip("/").rsplit("/", 1)[1]
    assert client.get(processing).status_code in (200, 302)
    action = wait_for(lambda: Action.objects.filter(pk=pk).finished().first(), timeout=20)
    assert action.status == "succeeded"
    assert action.percent == 100
    status = client.get(reverse("steps_view:status", kwargs={"pk": pk}))
    assert status.status_code == 200
    assert status.json()["status"] == "succeeded"
    assert client.get(reverse("steps_view:result", kwargs={"pk": pk})).status_code == 200
    # The pushes did fail (and were counted and logged), without touching the action.
    wait_for(lambda: pusher.failures > failures_before, timeout=10)
