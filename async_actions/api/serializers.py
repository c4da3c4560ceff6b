"""How an action looks in the API, and what a client may send to start one."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from django.urls import reverse
from rest_framework import serializers

from async_actions import ownership
from async_actions.models import Action, ActionFile


class ActionFileSerializer(serializers.ModelSerializer[ActionFile]):
    """A file of the action: an upload (``input``) or a result (``output``), with the
    URL that downloads it (for whoever may see the action)."""

    url = serializers.SerializerMethodField()

    class Meta:
        model = ActionFile
        fields = ["id", "name", "kind", "size", "content_type", "created_at", "url"]
        read_only_fields = fields

    def get_url(self, row: ActionFile) -> str:
        path = reverse(
            "async_actions_api:action-file", kwargs={"pk": row.action_id, "file_id": row.pk}
        )
        request = self.context.get("request")
        return str(request.build_absolute_uri(path)) if request is not None else path


class ActionSerializer(serializers.ModelSerializer[Action]):
    """An action as its owner sees it; the traceback only for staff who may see all."""

    owner = serializers.SerializerMethodField()
    duration = serializers.FloatField(read_only=True, allow_null=True)
    retry_of: serializers.PrimaryKeyRelatedField[Action] = serializers.PrimaryKeyRelatedField(
        read_only=True
    )
    traceback = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    files = ActionFileSerializer(many=True, read_only=True)

    class Meta:
        model = Action
        fields = [
            "id",
            "url",
            "handler",
            "status",
            "percent",
            "message",
            "data",
            "response",
            "error",
            "traceback",
            "attempt",
            "retry_of",
            "cancel_requested",
            "idempotency_key",
            "seq",
            "owner",
            "created_at",
            "started_at",
            "finished_at",
            "expires_at",
            "run_after",
            "duration",
            "files",
        ]
        read_only_fields = fields

    #: The fields as ``ModelSerializer`` builds them from the model, once per class.
    _built_fields: ClassVar[dict[str, serializers.Field[Any, Any, Any, Any]] | None] = None

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        """The fields, built from the model once and copied for each use.

        ``ModelSerializer`` builds every field from the model again for each action it
        serializes: a third of the API's start (issue 18), and of every list and read.
        Nothing it builds depends on the request, so a deep copy (what DRF does with
        declared fields anyway) gives the same fields.
        """
        cls = type(self)
        if cls.__dict__.get("_built_fields") is None:
            cls._built_fields = super().get_fields()
        return copy.deepcopy(cls._built_fields)  # type: ignore[arg-type]

    def get_owner(self, action: Action) -> str | None:
        """The owning user's name; None for an anonymous visitor's session."""
        return action.user.get_username() if action.user_id and action.user else None

    def get_traceback(self, action: Action) -> str:
        request = self.context.get("request")
        user = getattr(request, "user", None)
        return action.traceback if ownership.may_see_tracebacks(user) else ""

    def get_url(self, action: Action) -> str | None:
        """The action's processing page, when the site mounts one for it."""
        path = action.get_absolute_url()
        request = self.context.get("request")
        if not path or request is None:
            return None
        return str(request.build_absolute_uri(path))


class StartSerializer(serializers.Serializer[Any]):
    """The body of ``POST /actions/``."""

    handler = serializers.CharField(
        max_length=255,
        required=False,
        allow_blank=True,
        help_text="A public handler's name; leave out to let handlers' can_handle() choose.",
    )
    request = serializers.JSONField(
        required=False,
        default=dict,
        help_text="JSON given to the handler as ctx.request.",
    )
    idempotency_key = serializers.CharField(
        max_length=255,
        required=False,
        allow_blank=True,
        help_text="Repeat a start with the same key while the first is unfinished and get "
        "the same action back (200) instead of a second one.",
    )
    run_after = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="Do not start before this ISO 8601 time (without an offset: the site's "
        "TIME_ZONE); a past time means now. The action waits in pending until then.",
    )


class LogSerializer(serializers.Serializer[Any]):
    """The action's kept log records, oldest first (``LOG_LIMIT``, ``LOG_LIMIT_BYTES``)."""

    id = serializers.UUIDField()
    log = serializers.ListField(child=serializers.DictField())


class ErrorSerializer(serializers.Serializer[Any]):
    """Every error answer: a readable ``detail`` and, where useful, a machine ``code``."""

    detail = serializers.CharField()
    code = serializers.CharField(required=False)
    # Describes the JSON body for the schema only; never bound to data, so shadowing
    # Serializer.errors does no harm and keeps the documented field name.
    errors = serializers.DictField(  # type: ignore[assignment]
        required=False, help_text="Per-field messages when the body was invalid."
    )
