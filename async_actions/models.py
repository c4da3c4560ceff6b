"""The ``Action`` row: everything a piece of long-running work does, stored."""

from __future__ import annotations

import uuid
from typing import Any, Self, TypeVar

from django.conf import settings
from django.db import models, router
from django.db.models import Q
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from async_actions import events
from async_actions.conf import action_settings

_M = TypeVar("_M", bound=models.Model)


class PrimaryQuerySet(models.QuerySet[_M]):
    def primary(self) -> Self:
        """On the database the rows are written to (the router's ``db_for_write``).

        The engine decides on what it reads (is the key busy, is this request a repeat,
        what waits, what is stale, which files a worker gets), so it never reads from a
        replica that lags the writes; the surfaces may.
        """
        return self.using(router.db_for_write(self.model))


class ActionQuerySet(PrimaryQuerySet["Action"]):
    def active(self) -> ActionQuerySet:
        return self.filter(status__in=Action.ACTIVE_STATUSES)

    def finished(self) -> ActionQuerySet:
        return self.filter(status__in=Action.TERMINAL_STATUSES)

    def owned_by(self, user: Any = None, session_key: str | None = None) -> ActionQuerySet:
        """Actions that belong to a user, or (anonymous) to a session key, as given.

        The surfaces ask :mod:`async_actions.ownership`, which checks the session and
        the permissions to see or control others' actions.
        """
        if user is not None and getattr(user, "is_authenticated", False):
            return self.filter(user=user)
        if session_key:
            return self.filter(user__isnull=True, session_key=session_key)
        return self.none()


class Action(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    ACTIVE_STATUSES = (Status.PENDING, Status.RUNNING)
    TERMINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    handler = models.CharField(_("handler"), max_length=255)
    request = models.JSONField(_("request"), default=dict, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    percent = models.FloatField(_("percent"), default=0.0)
    message = models.TextField(_("message"), blank=True, default="")
    data = models.JSONField(_("progress data"), null=True, blank=True)
    response = models.JSONField(_("response"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True, default="")
    traceback = models.TextField(_("traceback"), blank=True, default="")
    log = models.JSONField(_("log"), default=list, blank=True)

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="async_actions",
    )
    session_key = models.CharField(_("session key"), max_length=64, blank=True, default="")
    #: Where the start came from (an IPv6 client as its /64); anonymous limits count by it.
    client_address = models.CharField(_("client address"), max_length=64, blank=True, default="")
    idempotency_key = models.CharField(_("idempotency key"), max_length=255, blank=True, default="")
    #: URL name of the page that shows this action (the processing page of the view that
    #: started it), reversed with ``pk``; empty for starts outside a view.
    page = models.CharField(_("page"), max_length=255, blank=True, default="", editable=False)

    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("heartbeat"), null=True, blank=True)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)

    cancel_requested = models.BooleanField(_("cancel requested"), default=False)
    attempt = models.PositiveIntegerField(_("attempt"), default=0)
    seq = models.BigIntegerField(_("sequence"), default=0)
    #: Actions sharing a non-empty key never run at the same time (see handlers docs).
    concurrency_key = models.CharField(_("concurrency key"), max_length=255, blank=True, default="")
    #: A pending action is not claimed before this time: a delayed start, or a retry's
    #: backoff (``async_actions.schedule``); stored, so it survives restarts.
    run_after = models.DateTimeField(_("run after"), null=True, blank=True)
    #: The Tasks backend's id of the task carrying this action (TasksRunner only):
    #: recovery asks the backend whether it is still queued before enqueueing another.
    task_id = models.CharField(_("task id"), max_length=255, blank=True, default="", editable=False)
    retry_of = models.ForeignKey(
        "self",
        verbose_name=_("retry of"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="retries",
    )

    objects = ActionQuerySet.as_manager()

    class Meta:
        verbose_name = _("action")
        verbose_name_plural = _("actions")
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["status", "created_at"], name="aa_status_created"),
            models.Index(fields=["user", "-created_at"], name="aa_user_created"),
            models.Index(fields=["session_key", "-created_at"], name="aa_session_created"),
            models.Index(fields=["handler", "-created_at"], name="aa_handler_created"),
            models.Index(fields=["expires_at"], name="aa_expires"),
            models.Index(
                fields=["heartbeat_at"],
                name="aa_running_heartbeat",
                condition=Q(status="running"),
            ),
            models.Index(
                fields=["concurrency_key", "created_at"],
                name="aa_pending_key",
                condition=Q(status="pending") & ~Q(concurrency_key=""),
            ),
            # Counting an owner's running actions under MAX_RUNNING_PER_OWNER, in every
            # claim and finish: a lookup on the owner's few entries (each kind a prefix:
            # a user; no user and an address; neither and a session) where the index of
            # running rows alone visits every running row and the dead entries each claim
            # leaves there until a vacuum.
            models.Index(
                fields=["user", "client_address", "session_key"],
                name="aa_running_owner",
                condition=Q(status="running"),
            ),
            # Counting an anonymous client's unfinished actions (limits, fair claims).
            models.Index(
                fields=["client_address", "status"],
                name="aa_active_address",
                condition=Q(status__in=["pending", "running"]) & ~Q(client_address=""),
            ),
        ]
        constraints = [
            # One active action per owner and idempotency key, enforced by the database
            # so two racing starts cannot both insert.
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                name="aa_idempotency_user",
                condition=Q(user__isnull=False)
                & ~Q(idempotency_key="")
                & Q(status__in=["pending", "running"]),
            ),
            models.UniqueConstraint(
                fields=["session_key", "idempotency_key"],
                name="aa_idempotency_session",
                condition=Q(user__isnull=True)
                & ~Q(idempotency_key="")
                & Q(status__in=["pending", "running"]),
            ),
            # At most one running action per concurrency key: a second claim fails in
            # the database, so two workers racing for one key never both run.
            models.UniqueConstraint(
                fields=["concurrency_key"],
                name="aa_one_running_per_key",
                condition=Q(status="running") & ~Q(concurrency_key=""),
            ),
            models.CheckConstraint(
                condition=Q(percent__gte=0) & Q(percent__lte=100), name="aa_percent_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} {self.short_id} ({self.status})"

    def get_absolute_url(self) -> str:
        """The action's processing page: the view's that started it, else the page
        ``DEFAULT_ACTION_PAGE`` names; "" when neither is mounted."""
        for name in (self.page, action_settings.DEFAULT_ACTION_PAGE):
            if not name:
                continue
            try:
                return reverse(name, kwargs={"pk": self.pk})
            except NoReverseMatch:
                continue
        return ""

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_finished(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (or to now while running)."""
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())

    def snapshot(self) -> dict[str, Any]:
        """The public state pushed to browsers and returned by the status endpoint
        (:func:`async_actions.events.snapshot`, which the publisher uses too)."""
        return events.snapshot(
            action_id=self.id,
            handler=self.handler,
            status=self.status,
            percent=self.percent,
            message=self.message,
            data=self.data,
            seq=self.seq,
            attempt=self.attempt,
            error=self.error,
            cancel_requested=self.cancel_requested,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            run_after=self.run_after,
        )


class ActionFile(models.Model):
    """A file kept in storage for an action: an upload it was started with, or a file
    its handler attached as a result. The row goes with its action (and the stored file
    with the row, see :mod:`async_actions.files`)."""

    class Kind(models.TextChoices):
        INPUT = "input", _("Uploaded")
        OUTPUT = "output", _("Result")

    action = models.ForeignKey(
        Action, verbose_name=_("action"), on_delete=models.CASCADE, related_name="files"
    )
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices)
    #: The file's name as shown and downloaded (sanitised; no folders).
    name = models.CharField(_("name"), max_length=255)
    #: The name in storage: ``async_actions/<action id>/<kind>/<name>`` (or a variant of it).
    path = models.CharField(_("path"), max_length=1024)
    size = models.BigIntegerField(_("size"), default=0)
    content_type = models.CharField(
        _("content type"), max_length=127, default="application/octet-stream"
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    objects = PrimaryQuerySet["ActionFile"].as_manager()

    class Meta:
        verbose_name = _("action file")
        verbose_name_plural = _("action files")
        ordering = ("created_at", "id")

    def __str__(self) -> str:
        return self.name
