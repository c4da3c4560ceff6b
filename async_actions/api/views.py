"""The actions endpoint: one viewset, every expected outcome an HTTP status with JSON.

Service outcomes (:class:`~async_actions.service.OpStatus`) map to status codes and JSON
``code`` values through :data:`async_actions.http.OUTCOMES`, the table the pages and the
admin use too, so the schema, the docs and the behaviour agree.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.db.models import QuerySet
from django.http import Http404
from django.http.response import HttpResponseBase
from django.utils.translation import gettext as _
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action as route
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from async_actions import http, ownership, service
from async_actions.addresses import client_address
from async_actions.api.parsers import BODY_SLACK, JSONParser, TooLarge
from async_actions.api.serializers import (
    ActionSerializer,
    ErrorSerializer,
    LogSerializer,
    StartSerializer,
)
from async_actions.conf import action_settings
from async_actions.models import Action
from async_actions.payloads import PayloadError, PayloadTooLarge
from async_actions.service import OpStatus

#: Seconds a client should wait before retrying a 429 or 503.
RETRY_AFTER = http.RETRY_AFTER

_Method = TypeVar("_Method", bound=Callable[..., Any])


class Refused(APIException):
    """A service outcome as an API error: status, ``code`` and ``detail`` from the table."""

    def __init__(self, status: OpStatus, detail: str | None = None) -> None:
        outcome = http.outcome(status)
        self.status_code = outcome.status
        super().__init__({"detail": detail or str(outcome.message), "code": outcome.code})


class ActionPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


def documented(**kwargs: Any) -> Callable[[_Method], _Method]:
    """``extend_schema`` on drf-spectacular's ``AutoSchema``, not the site's default.

    ``extend_schema`` subclasses ``DEFAULT_SCHEMA_CLASS`` when a method names no schema of
    its own; on a site that leaves DRF's default (or uses another generator), the
    served schema would then fail with a TypeError. Naming the class keeps the schema
    independent of the setting, as docs/api.md promises.
    """

    def decorate(method: _Method) -> _Method:
        method.schema = AutoSchema  # type: ignore[attr-defined]
        return extend_schema(**kwargs)(method)

    return decorate


NOT_FOUND = _error("No such action, or it is not yours.")
UNAVAILABLE = _error("Shutting down or database unavailable; retry after `Retry-After` seconds.")
UNAUTHENTICATED = _error("Authentication credentials were missing or wrong.")


class ActionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet[Action],
):
    """Actions of the authenticated user (all of them with ``view_action``)."""

    serializer_class = ActionSerializer
    permission_classes = [permissions.IsAuthenticated]
    # Described by drf-spectacular whatever the site's DEFAULT_SCHEMA_CLASS says.
    schema = AutoSchema()
    pagination_class = ActionPagination
    # JSON only: a start's ``request`` is nested JSON, which forms cannot express. The
    # parser caps size and depth before parsing.
    parser_classes = [JSONParser]
    lookup_value_regex = "[^/]+"
    #: ``StatusPollRouter(..., api=True)`` serves it in one thread hop: a sync view whose
    #: every request is short (a start, a poll, a cancel), all through Django's chain.
    one_hop = True

    def get_queryset(self) -> QuerySet[Action]:
        request = self.request
        queryset = (
            ownership.visible_actions(request.user, getattr(request, "session", None))
            .select_related("user")
            .prefetch_related("files")
        )
        if self.action != "list":
            return queryset
        params = self.request.query_params
        if any("\x00" in text for item in params.lists() for text in (item[0], *item[1])):
            # PostgreSQL cannot compare with a NUL character: refuse it, do not 503.
            raise ValidationError(
                {"detail": _("A query parameter holds a NUL character."), "code": "invalid_filter"}
            )
        wanted = params.get("status")
        if wanted:
            known = set(Action.Status.values)
            statuses = [value.strip() for value in wanted.split(",") if value.strip()]
            unknown = [value for value in statuses if value not in known]
            if unknown:
                raise ValidationError(
                    {
                        "detail": _("Unknown status %(unknown)s; use one of %(known)s.")
                        % {"unknown": ", ".join(unknown), "known": ", ".join(sorted(known))},
                        "code": "invalid_filter",
                    }
                )
            queryset = queryset.filter(status__in=statuses)
        if params.get("handler"):
            queryset = queryset.filter(handler=params["handler"])
        return queryset

    def get_object(self) -> Action:
        try:
            pk = uuid.UUID(str(self.kwargs[self.lookup_field]))
        except ValueError:
            raise NotFound("No such action.") from None
        action = self.get_queryset().filter(pk=pk).first()
        if action is None:
            raise NotFound("No such action.")
        return service.live(action)

    # The stub's row type is generic for values() querysets; ours are always Actions.
    def paginate_queryset(  # type: ignore[override]
        self, queryset: QuerySet[Action]
    ) -> list[Action] | None:
        page = super().paginate_queryset(queryset)
        return None if page is None else [service.live(action) for action in page]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, DatabaseError):
            exc = Refused(OpStatus.DB_FAILED)
        elif isinstance(exc, RequestDataTooBig):  # met first by the CSRF check of a session
            exc = TooLarge(f"The body is over DATA_UPLOAD_MAX_MEMORY_SIZE: {exc}")
        response = super().handle_exception(exc)
        if isinstance(response.data, dict) and "detail" not in response.data:
            response.data = _readable(response.data)
        elif isinstance(response.data, list):
            response.data = _readable({"body": response.data})
        elif isinstance(response.data, dict) and "code" not in response.data:
            # DRF's own errors (parse_error, not_authenticated, not_found, ...) carry
            # their code on the detail only: every error body names its code.
            code = getattr(response.data.get("detail"), "code", None)
            if code:
                response.data["code"] = str(code)
        for header, value in http.retry_headers(response.status_code).items():
            response[header] = value
        return response

    @documented(
        summary="List actions",
        parameters=[
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                enum=Action.Status.values,
                many=True,
                style="form",
                explode=False,
                description="One or more statuses, comma-separated.",
            ),
            OpenApiParameter("handler", OpenApiTypes.STR, description="A handler name."),
        ],
        responses={
            200: ActionSerializer(many=True),
            400: _error("An unknown status in the filter."),
            401: UNAUTHENTICATED,
            403: UNAUTHENTICATED,
            404: _error("A page past the last one."),
            503: UNAVAILABLE,
        },
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @documented(
        summary="One action",
        responses={
            200: ActionSerializer,
            401: UNAUTHENTICATED,
            403: UNAUTHENTICATED,
            404: NOT_FOUND,
            503: UNAVAILABLE,
        },
    )
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @documented(
        summary="Start an action",
        request=StartSerializer,
        responses={
            201: ActionSerializer,
            200: OpenApiResponse(
                ActionSerializer,
                description="The unfinished action with this idempotency key (the same start).",
            ),
            400: _error(
                "Invalid body, unknown handler, a request nested deeper than MAX_JSON_DEPTH "
                "or one that cannot be stored."
            ),
            401: UNAUTHENTICATED,
            403: UNAUTHENTICATED,
            409: _error("The handler runs one at a time for this request and refuses to queue."),
            413: _error("The body or its `request` is over MAX_REQUEST_BYTES."),
            415: _error("The body is not `application/json`."),
            422: _error(
                "The idempotency key already names an unfinished action of yours with "
                "another handler or request."
            ),
            429: _error("You have MAX_ACTIVE_PER_OWNER actions unfinished already."),
            503: UNAVAILABLE,
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        limit = action_settings.MAX_REQUEST_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit + BODY_SLACK:
            raise TooLarge(f"The body is {length} bytes; the limit is {limit + BODY_SLACK}.")
        body = StartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        values = body.validated_data
        try:
            result = service.start(
                values.get("handler") or None,
                values.get("request"),
                user=request.user,
                idempotency_key=values.get("idempotency_key") or None,
                public_only=True,
                client_address=client_address(request.META) or None,
                run_after=values.get("run_after"),
            )
        except PayloadTooLarge as exc:
            raise TooLarge(str(exc)) from None
        except (PayloadError, ValueError) as exc:
            raise ValidationError({"detail": str(exc), "code": "invalid_request"}) from None
        if result.status is OpStatus.OK and result.action is not None:
            if result.created:
                # The answer shows the action as this start made it, "pending" and without
                # files (the API takes no uploads), not a later state: no query for them,
                # nor one compiled (an empty result, as prefetch_related stores one).
                files = result.action.files.none()
                files._result_cache = []
                result.action._prefetched_objects_cache = {  # type: ignore[attr-defined]
                    "files": files
                }
            data = ActionSerializer(result.action, context=self.get_serializer_context()).data
            code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
            headers = {"Location": request.build_absolute_uri(f"{result.action.pk}/")}
            return Response(data, status=code, headers=headers if result.created else None)
        raise _start_refused(result.status, values.get("handler") or "")

    @documented(
        summary="Cancel an action",
        request=None,
        responses={
            202: OpenApiResponse(
                ActionSerializer,
                description="Cancelled (pending) or asked to stop (running).",
            ),
            401: UNAUTHENTICATED,
            403: _error(
                "Credentials missing or wrong, or you may see the action but not cancel it."
            ),
            404: NOT_FOUND,
            409: _error("The action has already finished."),
            503: UNAVAILABLE,
        },
    )
    @route(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        action = self.get_object()
        controllable = ownership.controllable_actions(
            request.user, getattr(request, "session", None)
        )
        if not controllable.filter(pk=action.pk).exists():
            raise PermissionDenied("You may see this action but not cancel it.")
        outcome = service.cancel(action.pk)
        if outcome is OpStatus.ACTION_COMPLETED:
            action.refresh_from_db(fields=["status"])
            raise Refused(outcome, str(http.finished_message(action.status)))
        if outcome is OpStatus.NOT_FOUND:
            raise NotFound("No such action.")
        if outcome is not OpStatus.OK:
            raise Refused(outcome)
        action.refresh_from_db()
        return Response(
            ActionSerializer(action, context=self.get_serializer_context()).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @documented(
        summary="An action's log",
        responses={
            200: LogSerializer,
            401: UNAUTHENTICATED,
            403: UNAUTHENTICATED,
            404: NOT_FOUND,
            503: UNAVAILABLE,
        },
    )
    @route(detail=True, methods=["get"])
    def log(self, request: Request, pk: str | None = None) -> Response:
        action = self.get_object()
        return Response({"id": str(action.pk), "log": action.log or []})

    @documented(
        summary="Download one of an action's files",
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            401: UNAUTHENTICATED,
            403: UNAUTHENTICATED,
            404: _error("No such action or file, or the file is no longer in storage."),
            503: UNAVAILABLE,
        },
    )
    @route(detail=True, methods=["get"], url_path=r"files/(?P<file_id>[0-9]+)", url_name="file")
    def file(self, request: Request, pk: str | None = None, file_id: str = "") -> HttpResponseBase:
        action = self.get_object()
        row = action.files.filter(pk=int(file_id)).first()
        if row is None:
            raise NotFound("No such file.")
        try:
            return http.file_response(row)
        except Http404 as exc:
            raise NotFound(str(exc)) from None

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # A download answers with the file's own type whatever the client accepts.
        return super().perform_content_negotiation(request, force=force or self.action == "file")


def _readable(errors: dict[str, Any]) -> dict[str, Any]:
    """Field errors as one readable ``detail``, with the per-field lists kept in ``errors``."""
    parts = []
    for name, messages in errors.items():
        text = " ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
        parts.append(f"{name}: {text}")
    return {
        "detail": _("Invalid body.") + " " + "; ".join(parts),
        "code": "invalid",
        "errors": errors,
    }


def _start_refused(outcome: OpStatus, handler: str) -> APIException:
    """The HTTP error for a start the service did not accept."""
    if outcome is OpStatus.NO_HANDLER:
        detail = (
            _("No public handler is named %(name)s.") % {"name": repr(handler)}
            if handler
            else _("No handler accepts this request; name one in “handler”.")
        )
        return ValidationError({"detail": detail, "code": "no_handler"})
    return Refused(outcome)
