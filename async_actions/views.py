"""Views a site subclasses: a start page, the processing page, the result page.

Subclass :class:`BaseAsyncView` (or :class:`AsyncFormView`), write ``run(ctx, data)``,
and mount ``include(MyView.urls())``. The class is also the action's handler, found by
its dotted path, so a worker in another process runs the same ``run()``.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import File
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, models, router, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import get_conditional_response, patch_vary_headers
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.views import View

from async_actions import fairness, files, http, ownership, service
from async_actions.addresses import client_address
from async_actions.conf import action_settings
from async_actions.exceptions import FileLimitError
from async_actions.handlers import ActionHandler, HandlerOptions, handler_options, register
from async_actions.models import Action, ActionFile
from async_actions.payloads import PayloadError, PayloadTooLarge, check_depth, check_text_depth
from async_actions.service import OpStatus

if TYPE_CHECKING:
    from async_actions.context import ActionContext

__all__ = [
    "ActionPageMixin",
    "ActionView",
    "AsyncFormView",
    "BaseAsyncView",
    "CancelPage",
    "FilePage",
    "ProcessingPage",
    "ResultPage",
    "StatusPage",
]

logger = logging.getLogger("async_actions")

#: Seconds a client is asked to wait after a 429 or 503 (kept for imports of the old name).
RETRY_AFTER = http.RETRY_AFTER

#: The message of a refused start that is the site's fault, not the visitor's.
CANNOT_START = _lazy("This action cannot be started right now.")


class _ViewHandler(ActionHandler):
    """Runs a view's ``run()``; not public, so API clients cannot start views by name."""

    def __init__(self, view_class: type[BaseAsyncView]) -> None:
        self.name = view_class.handler_name()  # type: ignore[misc]
        self.view_class = view_class
        # A view declares its options (time_limit, concurrency_key, ...) like a handler.
        super().__init__(
            handler_options(
                self.name, lambda: HandlerOptions.from_attributes(view_class, public=False)
            )
        )

    def handle(self, ctx: ActionContext) -> Any:
        # Uploads reach run() as StoredFile objects, not as their markers in the JSON.
        return self.view_class().run(ctx, files.resolve_inputs(ctx.action_id, ctx.request))

    @property
    def source(self) -> str:
        return self.name


class BaseAsyncView(View):
    """Start page on GET; POST starts ``run()`` as an action and redirects to its progress.

    Pages: ``template_name`` (initial), ``processing_template_name``,
    ``result_template_name``, ``failed_template_name``, ``cancelled_template_name``.
    """

    template_name: ClassVar[str] = "async_actions/start.html"
    processing_template_name: ClassVar[str] = "async_actions/processing.html"
    result_template_name: ClassVar[str] = "async_actions/result.html"
    failed_template_name: ClassVar[str] = "async_actions/failed.html"
    cancelled_template_name: ClassVar[str] = "async_actions/cancelled.html"
    error_template_name: ClassVar[str] = "async_actions/unavailable.html"
    #: Shown as the page heading; defaults to the class name in words.
    title: ClassVar[str] = ""
    #: The URL namespace ``urls()`` mounts under; defaults to the class name in snake case.
    url_namespace: ClassVar[str] = ""
    #: The action page this instance serves (set per request by its page view); None on
    #: the start page.
    action_page: ActionPageMixin | None = None
    #: The id the next start gives its action (None: a new one); set by a form view
    #: that stores uploads under it first.
    new_action_id: uuid.UUID | None = None
    #: The action this request created, once :meth:`start` created one.
    started_action: Action | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Register concrete views at import, so this process finds them without the
        # dotted-path import a separate worker does.
        if "run" in cls.__dict__:
            register(cls.as_action_handler())

    # -- the work ----------------------------------------------------------------------
    def run(self, ctx: ActionContext, data: Any) -> Any:
        """Do the work (in a worker, without a request); return JSON for the result page."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement run(ctx, data)")

    @classmethod
    def handler_name(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def as_action_handler(cls) -> ActionHandler:
        """The handler a worker uses to run this view's ``run()``."""
        return _ViewHandler(cls)

    # -- URLs --------------------------------------------------------------------------
    @classmethod
    def namespace(cls) -> str:
        return cls.url_namespace or re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    @classmethod
    def urls(cls, **initkwargs: Any) -> tuple[list[Any], str]:
        """Patterns for ``include()``: initial, processing, result, status and cancel.

        The start page is this class; each other page is a small view of its own
        (:class:`ProcessingPage`, ...) that looks the action up and calls back into an
        instance of this class for its hooks and templates.
        """
        patterns = [path("", cls.as_view(**initkwargs), name="initial")]
        for route, page in ACTION_PAGES.items():
            view = page.as_view(view_class=cls, view_initkwargs=initkwargs)
            patterns.append(path(route, view, name=page.name))
        return patterns, cls.namespace()

    def url_name(self, name: str) -> str:
        """The full URL name of a page of this view's set, in the request's namespace."""
        match = self.request.resolver_match
        prefix = f"{match.namespace}:" if match is not None and match.namespace else ""
        return f"{prefix}{name}"

    def url_for(self, name: str, action: Action | None = None) -> str:
        """A URL of this view's set, in the namespace the request came through."""
        kwargs = {"pk": action.pk} if action is not None else None
        return reverse(self.url_name(name), kwargs=kwargs)

    # -- dispatch ----------------------------------------------------------------------
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            if self.action_page is not None:  # set by ActionPageMixin: one of the action pages
                return self.action_page.serve(self, request, *args, **kwargs)
            return super().dispatch(request, *args, **kwargs)
        except DatabaseError:
            logger.exception("Database error in %s", type(self).__qualname__)
            return self.refusal(OpStatus.DB_FAILED)

    def get_queryset(self) -> models.QuerySet[Action]:
        """Actions the visitor may see (:mod:`async_actions.ownership`), of this view."""
        return ownership.visible_actions(*self._visitor).filter(handler=self.handler_name())

    @property
    def _visitor(self) -> tuple[Any, Any]:
        """``(user, session)`` of the request, as :mod:`async_actions.ownership` takes them."""
        return getattr(self.request, "user", None), getattr(self.request, "session", None)

    def get_action(self, pk: uuid.UUID) -> Action:
        if type(self).get_queryset is BaseAsyncView.get_queryset:
            # The default rule: read the row, then ask for permissions only if it is
            # someone else's (ownership.visible_action), and skip the columns the page
            # does not show.
            defer = self.action_page.deferred_fields if self.action_page is not None else ()
            action = ownership.visible_action(
                *self._visitor, pk, defer=defer, handler=self.handler_name()
            )
        else:
            action = self.get_queryset().filter(pk=pk).first()
        if action is None:
            raise Http404(_("No such action."))
        return service.live(action)

    # -- the pages ---------------------------------------------------------------------
    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return self.initial_page()

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not self.run_process():
            return self.initial_page()
        return self.start(self.get_run_data(), run_after=self.get_run_after())

    def get_run_after(self, form: forms.BaseForm | None = None) -> datetime | timedelta | None:
        """When the action may start: None (the default) for now, an aware datetime or
        a timedelta to delay it. ``AsyncFormView`` passes the valid form, so a form
        field can choose the time; the processing page says "Scheduled for …" meanwhile.
        """
        return None

    def run_process(self) -> bool:
        """Whether this request starts the action (default: every POST)."""
        return self.request.method == "POST"

    def get_run_data(self) -> Any:
        """The JSON handed to ``run()``; by default the POST fields (lists for repeats)."""
        data = {}
        for key in self.request.POST:
            if key == "csrfmiddlewaretoken":
                continue
            values = self.request.POST.getlist(key)
            data[key] = values[0] if len(values) == 1 else values
        return data

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("view", self)
        kwargs.setdefault("title", self.get_title())
        return kwargs

    def get_title(self) -> str:
        if self.title:
            return self.title
        words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(self).__name__.removesuffix("View"))
        return words.capitalize()

    def render(self, template: str, status: int = 200, **context: Any) -> HttpResponse:
        return TemplateResponse(
            self.request, template, self.get_context_data(**context), status=status
        )

    def initial_page(self, **context: Any) -> HttpResponse:
        """The start page (GET, or a POST that did not start an action)."""
        return self.render(self.template_name, **context)

    def processing_page(self, action: Action) -> HttpResponse:
        """Live progress while the action runs; a finished action goes to its result."""
        if action.is_finished:
            return redirect(self.url_for("result", action))
        return self.render(self.processing_template_name, **self.action_context(action))

    def result_page(self, action: Action) -> HttpResponse:
        """The outcome: the result, or a readable failed or cancelled page."""
        if action.is_active:
            return redirect(self.url_for("processing", action))
        context = self.action_context(action)
        if action.status == Action.Status.CANCELLED:
            return self.render(self.cancelled_template_name, **context)
        if action.status == Action.Status.FAILED:
            return self.render(self.failed_template_name, **context)
        return self.render(self.result_template_name, response=action.response, **context)

    def status_page(self, action: Action) -> HttpResponse:
        """The status JSON the progress element polls when it has no WebSocket.

        Conditional: the response carries :meth:`status_etag`, and a poll that sends it
        back in ``If-None-Match`` while nothing changed gets an empty 304. Reached only
        after the visitor was allowed to see the action (``get_action``).
        """
        headers = {"Cache-Control": "no-store", "ETag": self.status_etag(action)}
        unchanged = get_conditional_response(self.request, etag=headers["ETag"])
        if unchanged is not None:
            for header, value in headers.items():
                unchanged[header] = value
            return unchanged  # a 304 (or a 412 for If-Match)
        return JsonResponse(self.status_json(action), headers=headers)

    def status_etag(self, action: Action) -> str:
        """The status JSON's validator: it changes whenever the JSON can change.

        Every progress update and transition bumps ``seq``; a cancel request on a running
        action does not, so ``cancel_requested`` is part of it, and so is whether the
        visitor sees tracebacks. Override it with :meth:`status_json` if you add fields
        that change without these.
        """
        parts = (
            action.pk.hex if isinstance(action.pk, uuid.UUID) else str(action.pk),
            str(action.seq),
            str(action.status),
            str(action.attempt),
            "c" if action.cancel_requested else "",
            "t" if self.shows_tracebacks else "",
        )
        return f'W/"{"-".join(parts)}"'

    def status_json(self, action: Action) -> dict[str, Any]:
        snapshot = action.snapshot()
        snapshot["result_url"] = self.url_for("result", action)
        snapshot["completed"] = _completed(action)
        if self.shows_tracebacks:
            snapshot["traceback"] = action.traceback
        return snapshot

    def action_context(self, action: Action) -> dict[str, Any]:
        return {
            "action": action,
            "show_traceback": self.shows_tracebacks and bool(action.traceback),
            "processing_url": self.url_for("processing", action),
            "result_url": self.url_for("result", action),
            "status_url": self.url_for("status", action),
            "cancel_url": self.url_for("cancel", action) if self.may_control(action) else "",
            "start_url": self.url_for("initial"),
            "files": self.file_links(action),
            "poll_interval": action_settings.POLL_INTERVAL,
            # Whole seconds for the no-JavaScript <meta refresh>; 0 would reload at once.
            "refresh_seconds": max(1, round(action_settings.POLL_INTERVAL)),
        }

    def file_links(self, action: Action) -> list[tuple[ActionFile, str]]:
        """The action's result files with their download URLs (``file`` page), oldest first."""
        rows = action.files.filter(kind=ActionFile.Kind.OUTPUT)
        return [(row, self.file_url(action, row)) for row in rows]

    def file_url(self, action: Action, row: ActionFile) -> str:
        match = self.request.resolver_match
        prefix = f"{match.namespace}:" if match is not None and match.namespace else ""
        return reverse(f"{prefix}file", kwargs={"pk": action.pk, "file_id": row.pk})

    def file_download(self, action: Action, file_id: int) -> HttpResponseBase:
        """One of the action's files as an attachment; 404 for another action's or a
        file no longer in storage."""
        row = action.files.filter(pk=file_id).first()
        if row is None:
            raise Http404(_("No such file."))
        return http.file_response(row)

    @property
    def shows_tracebacks(self) -> bool:
        """Staff who may see every action get tracebacks; owners get the error message."""
        return ownership.may_see_tracebacks(self._visitor[0])

    def may_control(self, action: Action) -> bool:
        """Whether the visitor may cancel the action: its owner, or ``change_action``."""
        return ownership.controllable_actions(*self._visitor).filter(pk=action.pk).exists()

    # -- operations --------------------------------------------------------------------
    def start(self, data: Any, *, run_after: datetime | timedelta | None = None) -> HttpResponse:
        """Start the action with ``data`` (not before ``run_after``, when given) and
        answer 303 to its processing page."""
        user, session_key = ownership.new_owner(*self._visitor)
        try:
            result = service.start(
                self.handler_name(),
                data,
                user=user,
                session_key=session_key,
                client_address=client_address(self.request.META) or None,
                action_id=self.new_action_id,
                # Links to the action (the API's url, the admin's "View on site") lead here.
                page=self.url_name("processing"),
                run_after=run_after,
            )
        except PayloadError as exc:  # a NUL character, a request over MAX_REQUEST_BYTES...
            return self.refused(exc)
        if result.created:
            self.started_action = result.action
        if result.status is OpStatus.OK and result.action is not None:
            return redirect_303(self.url_for("processing", result.action), self.request)
        if result.status is OpStatus.NO_HANDLER:
            # The view names its own handler: a missing one is the site's fault (503),
            # not the visitor's request (the API's 400).
            logger.error("Could not start %s: %s", self.handler_name(), result.status)
            return self.unavailable(CANNOT_START, status=503)
        return self.refusal(result.status)

    def cancel(self, action: Action) -> HttpResponse:
        """Ask the action to stop; JSON for scripts, a redirect for plain forms."""
        wants_json = "application/json" in self.request.headers.get("Accept", "")
        if not self.may_control(action):  # one who may see it but not control it
            if wants_json:
                return JsonResponse({"status": "forbidden"}, status=403)
            return self.unavailable(_("You may not cancel this action."), status=403)
        status = service.cancel(action.pk)
        if wants_json:
            return JsonResponse({"status": status.value}, status=http.outcome(status).status)
        action.refresh_from_db()
        page = "result" if action.is_finished else "processing"
        return redirect_303(self.url_for(page, action), self.request)

    def refused(self, exc: PayloadError) -> HttpResponse:
        """400 (413 when too large) for submitted data that cannot become a request."""
        return self.unavailable(
            _("The submitted data cannot be accepted: %(reason)s") % {"reason": exc},
            status=413 if isinstance(exc, PayloadTooLarge) else 400,
        )

    def refusal(self, status: OpStatus) -> HttpResponse:
        """The error page for a service outcome, as :data:`async_actions.http.OUTCOMES` says."""
        outcome = http.outcome(status)
        return self.unavailable(outcome.message, status=outcome.status)

    def unavailable(self, message: str | Promise, *, status: int) -> HttpResponse:
        """The error page (``error_template_name``) with ``message``; 429/503 add Retry-After."""
        response = self.render(self.error_template_name, status=status, message=message)
        for header, value in http.retry_headers(status).items():
            response[header] = value
        return response


class AsyncFormView(BaseAsyncView):
    """A form on the start page; valid ``cleaned_data`` (as JSON) goes to ``run()``.

    Uploaded files are stored through ``FILE_STORAGE`` under the action's folder and
    reach ``run()`` as :class:`async_actions.files.StoredFile` objects.
    """

    template_name: ClassVar[str] = "async_actions/form.html"
    form_class: ClassVar[type[forms.BaseForm] | None] = None
    #: Rows of the uploads stored for the action this POST is about to start.
    uploads: list[ActionFile]

    def get_form_class(self) -> type[forms.BaseForm]:
        if self.form_class is None:
            raise NotImplementedError(f"{type(self).__qualname__} needs a form_class")
        return self.form_class

    def get_form_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.request.method == "POST":
            kwargs.update(data=self.request.POST, files=self.request.FILES)
        return kwargs

    def get_form(self) -> forms.BaseForm:
        return self.get_form_class()(**self.get_form_kwargs())

    def initial_page(self, **context: Any) -> HttpResponse:
        context.setdefault("form", self.get_form())
        status = 400 if context["form"].is_bound and context["form"].errors else 200
        return self.render(self.template_name, status=status, **context)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not self.run_process():
            return self.initial_page()
        form = self.get_form()
        self.new_action_id, self.uploads = uuid.uuid4(), []
        try:
            self.check_upload_quota()
            self.check_json_fields(form)
            if not form.is_valid():
                return self.form_invalid(form)
            data = self.form_data(form)
        except PayloadError as exc:  # JSON nested deeper than MAX_JSON_DEPTH
            self._discard_uploads()
            return self.refused(exc)
        except FileLimitError as exc:  # too large, or too many files
            self._discard_uploads()
            return self.unavailable(str(exc), status=413)
        except BaseException:
            self._discard_uploads()
            raise
        return self.start(data, run_after=self.get_run_after(form))

    def check_upload_quota(self) -> None:
        """Refuse (FileLimitError, 413) uploads that would take the visitor over
        ``MAX_UPLOAD_BYTES_PER_OWNER``, before anything is stored."""
        incoming = sum(
            int(upload.size or 0)
            for name in self.request.FILES
            for upload in self.request.FILES.getlist(name)
        )
        if not incoming:
            return
        user, session_key = ownership.new_owner(*self._visitor)
        owner = fairness.owner_of(
            getattr(user, "pk", None), client_address(self.request.META), session_key or ""
        )
        files.check_owner_quota(owner, incoming)

    def start(self, data: Any, *, run_after: datetime | timedelta | None = None) -> HttpResponse:
        """Start the action; its uploads' rows are saved in the transaction that creates
        it, so the worker finds them. A start that is refused removes them from storage."""
        if not getattr(self, "uploads", None):  # none stored, or a post() of the site's own
            return super().start(data, run_after=run_after)
        try:
            with transaction.atomic(using=router.db_for_write(Action)):
                response = super().start(data, run_after=run_after)
                if self.started_action is not None:
                    files.record_uploads(self.uploads)
        except BaseException:
            self._discard_uploads()
            raise
        if self.started_action is None:
            self._discard_uploads()
        return response

    def _discard_uploads(self) -> None:
        files.remove_stored(row.path for row in self.uploads)
        self.uploads = []

    def check_json_fields(self, form: forms.BaseForm) -> None:
        """Refuse too-deep text in ``forms.JSONField`` fields before the form parses it.

        ``json.loads`` in the field (and again when an invalid form is shown) raises
        RecursionError on deep enough text. The field's value sits inside the form's
        data, the action's request, so it may nest one level less than the request.
        """
        limit = action_settings.MAX_JSON_DEPTH - 1
        for name, field in form.fields.items():
            if not isinstance(field, forms.JSONField) or field.disabled:
                continue
            raw = field.widget.value_from_datadict(form.data, form.files, form.add_prefix(name))
            if isinstance(raw, str | bytes):
                check_text_depth(raw, f"The field {field.label or name!r}", limit=max(0, limit))

    def form_invalid(self, form: forms.BaseForm) -> HttpResponse:
        return self.initial_page(form=form)

    def form_data(self, form: forms.BaseForm) -> Any:
        """``cleaned_data`` as JSON: files are stored and become markers (``{"$file":
        path}``, a :class:`~async_actions.files.StoredFile` in ``run()``), models their keys.
        """
        check_depth(form.cleaned_data, "The form data")  # before _to_json recurses into it
        return {key: self._to_json(value) for key, value in form.cleaned_data.items()}

    def _to_json(self, value: Any) -> Any:
        if isinstance(value, File):
            if self.new_action_id is None:
                self.new_action_id, self.uploads = uuid.uuid4(), []
            row = files.store_upload(self.new_action_id, value, kept=len(self.uploads))
            self.uploads.append(row)
            return {files.MARKER: row.path}
        if isinstance(value, models.Model):
            return value.pk
        if isinstance(value, models.QuerySet):
            return [obj.pk for obj in value]
        if isinstance(value, list | tuple | set | frozenset):
            return [self._to_json(item) for item in value]
        if isinstance(value, dict):
            return {str(k): self._to_json(v) for k, v in value.items()}
        return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


class ActionView(BaseAsyncView):
    """Pages for any action the visitor may see, whoever started it (API, service, script).

    Mount it with ``path("actions/", include(ActionView.urls()))`` (namespace
    ``async_actions``) and set ``DEFAULT_ACTION_PAGE`` to ``"async_actions:processing"``:
    actions no view started then have a page too. It has no start page (404).
    """

    url_namespace: ClassVar[str] = "async_actions"

    def get_title(self) -> str:
        return _("Action")

    def get_queryset(self) -> models.QuerySet[Action]:
        """Every action the visitor may see, of any handler."""
        return ownership.visible_actions(*self._visitor)

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        raise Http404(_("Actions are started elsewhere."))

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        raise Http404(_("Actions are started elsewhere."))

    def action_context(self, action: Action) -> dict[str, Any]:
        # No "Start again": this page did not start it.
        return {**super().action_context(action), "start_url": ""}


class ActionPageMixin(View):
    """One page of an action, for a user's view class: lookup, ownership, 404 and 503.

    ``urls()`` mounts each page with ``view_class`` (the user's subclass of
    :class:`BaseAsyncView`). The page builds an instance of it for the request and
    calls back into it, so its hooks (``get_queryset``, ``result_page``,
    ``status_json``, templates, ...) decide what the page shows.
    """

    #: The name of the page in the view's URL namespace.
    name: ClassVar[str] = ""
    #: Columns the page never shows, left unread by the default lookup.
    deferred_fields: ClassVar[tuple[str, ...]] = ()
    view_class: type[BaseAsyncView] | None = None
    view_initkwargs: dict[str, Any] | None = None

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        view = self.user_view(request, *args, **kwargs)
        view.action_page = self
        # Through the user's own dispatch, so its mixins and decorators (LoginRequiredMixin,
        # a permission check...) guard every page as they guard the start page; it calls
        # serve() back, and answers a DatabaseError with the 503 page.
        return view.dispatch(request, *args, **kwargs)

    def serve(
        self, view: BaseAsyncView, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        """Look the action up through ``view`` (404 for others' and unknown ones) and answer."""
        action = view.get_action(kwargs["pk"])
        if (request.method or "").lower() not in self.http_method_names:
            return self.http_method_not_allowed(request, *args, **kwargs)
        return self.answer(view, action)

    def user_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> BaseAsyncView:
        """An instance of the user's view class, set up for this request."""
        if self.view_class is None:
            raise ImproperlyConfigured(f"{type(self).__qualname__} needs a view_class")
        view = self.view_class(**(self.view_initkwargs or {}))
        view.setup(request, *args, **kwargs)
        return view

    def answer(self, view: BaseAsyncView, action: Action) -> HttpResponseBase:
        """The page's response for ``action``, through ``view``'s hooks."""
        raise NotImplementedError


class ProcessingPage(ActionPageMixin):
    """Live progress; a finished action redirects to its result."""

    name = "processing"
    http_method_names = ["get", "head"]

    def answer(self, view: BaseAsyncView, action: Action) -> HttpResponse:
        return view.processing_page(action)


class ResultPage(ActionPageMixin):
    """The result, failed or cancelled page; a running action redirects to processing."""

    name = "result"
    http_method_names = ["get", "head"]

    def answer(self, view: BaseAsyncView, action: Action) -> HttpResponse:
        return view.result_page(action)


class StatusPage(ActionPageMixin):
    """The status JSON the progress element polls without a WebSocket."""

    name = "status"
    http_method_names = ["get", "head"]
    deferred_fields = ("request", "response", "log")

    def answer(self, view: BaseAsyncView, action: Action) -> HttpResponse:
        return view.status_page(action)


class CancelPage(ActionPageMixin):
    """POST: ask the action to stop (JSON or a redirect, as the view's ``cancel`` says)."""

    name = "cancel"
    http_method_names = ["post"]

    def answer(self, view: BaseAsyncView, action: Action) -> HttpResponse:
        return view.cancel(action)


class FilePage(ActionPageMixin):
    """GET: one of the action's files, as an attachment, for whoever may see the action."""

    name = "file"
    http_method_names = ["get", "head"]

    def answer(self, view: BaseAsyncView, action: Action) -> HttpResponseBase:
        return view.file_download(action, int(view.kwargs["file_id"]))


#: Route → page view, mounted by :meth:`BaseAsyncView.urls` after the start page.
ACTION_PAGES: dict[str, type[ActionPageMixin]] = {
    "processing/<uuid:pk>/": ProcessingPage,
    "result/<uuid:pk>/": ResultPage,
    "status/<uuid:pk>/": StatusPage,
    "cancel/<uuid:pk>/": CancelPage,
    "file/<uuid:pk>/<int:file_id>/": FilePage,
}


def redirect_303(url: str, request: HttpRequest | None = None) -> HttpResponse:
    """See Other: the browser follows with GET, so reload does not resubmit the form.

    A form posted by htmx (``HX-Request``, not a boosted one) gets ``HX-Redirect``
    instead: htmx's XMLHttpRequest would follow the 303 itself and swap the whole
    processing page into the element that posted, a page inside a page whose script and
    live connection do not belong there. Boosted forms swap the body and take the URL,
    so a 303 is right for them.
    """
    headers = request.headers if request is not None else {}
    if headers.get("HX-Request") == "true" and headers.get("HX-Boosted") != "true":
        response = HttpResponse(status=200)
        response["HX-Redirect"] = url
    else:
        response = HttpResponse(status=303)
        response["Location"] = url
    patch_vary_headers(response, ("HX-Request",))
    return response


def _completed(action: Action) -> bool | float | str:
    """The ``completed`` field: True, False (pending), the percent, or "ERROR"."""
    if action.status == Action.Status.SUCCEEDED:
        return True
    if action.status in (Action.Status.FAILED, Action.Status.CANCELLED):
        return "ERROR"
    if action.status == Action.Status.PENDING:
        return False
    return action.percent
