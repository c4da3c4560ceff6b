"""A user model with a UUID primary key, for tests/test_uuid_user.py: SQLite stores it
as 32 hex digits, so a hand-written statement binding the raw pk matches nothing."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
