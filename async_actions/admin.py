"""The operator's view of actions: find, watch, cancel, retry and purge them.

The change page is read-only (an action's record is history, not a form) and shows live
progress through the same ``<async-action-progress>`` element users see.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from async_actions import http, retention, service
from async_actions.metrics import queue
from async_actions.models import Action
from async_actions.service import OpStatus

#: The owner's name as a lookup: the user model's ``USERNAME_FIELD`` (a site's model may
#: be named by e-mail and have no ``username``). Admin modules load once the apps are.
OWNER_NAME = f"user__{get_user_model().USERNAME_FIELD}"

if TYPE_CHECKING:
    # django-stubs makes ModelAdmin generic; at runtime Django's class is not subscriptable.
    _ModelAdmin = admin.ModelAdmin[Action]
else:
    _ModelAdmin = admin.ModelAdmin


def _pretty(value: Any) -> str:
    if value is None or value == {} or value == []:
        return "—"
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return format_html('<pre class="aa-admin-json">{}</pre>', text)


@admin.register(Action)
class ActionAdmin(_ModelAdmin):
    list_display = [
        "short_id",
        "handler",
        "owner",
        "status_badge",
        "progress",
        "created_at",
        "duration_display",
        "attempt",
    ]
    list_display_links = ["short_id"]
    list_filter = ["status", ("handler", admin.AllValuesFieldListFilter), "created_at"]
    list_select_related = ["user"]
    #: A session key is the visitor's session cookie: the list shows its first 8
    #: characters, and search matches a whole key only ("=") so that a substring search
    #: cannot spell out the rest one character at a time.
    search_fields = ["handler", OWNER_NAME, "=session_key"]
    search_help_text = _("An id (or its first characters), a handler name or an owner.")
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False
    ordering = ["-created_at"]
    actions = ["cancel_selected", "retry_selected", "purge_expired"]
    change_form_template = "admin/async_actions/action/change_form.html"
    change_list_template = "admin/async_actions/action/change_list.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "handler",
                    "status_badge",
                    "owner",
                    "attempt",
                    "retry_of_link",
                    "retries_list",
                    "cancel_requested",
                    "concurrency_key",
                    "idempotency_key",
                ]
            },
        ),
        (
            _("Time"),
            {
                "fields": [
                    "created_at",
                    "started_at",
                    "finished_at",
                    "duration_display",
                    "heartbeat_at",
                    "run_after",
                    "expires_at",
                ]
            },
        ),
        (_("Request"), {"fields": ["request_json"]}),
        (_("Progress"), {"fields": ["percent_display", "message", "data_json"]}),
        (_("Outcome"), {"fields": ["response_json", "error", "traceback_text"]}),
        (_("Files"), {"fields": ["file_links"]}),
        (_("Log"), {"fields": ["log_lines"]}),
    ]
    readonly_fields = [
        name for _title, options in fieldsets for name in options["fields"] if isinstance(name, str)
    ]

    class Media:
        css = {"all": ["async_actions/progress.css", "async_actions/admin.css"]}

    def view_on_site(self, action: Action) -> str | None:
        """The action's page on the site; no "View on site" button when it has none."""
        return action.get_absolute_url() or None

    # -- permissions: history is read-only -----------------------------------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Action | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Action | None = None) -> bool:
        # An unfinished action is cancelled, not deleted: its handler would run on untracked.
        if obj is not None and obj.status not in Action.TERMINAL_STATUSES:
            return False
        return super().has_delete_permission(request, obj)

    # -- list columns -----------------------------------------------------------------
    @admin.display(description=_("id"), ordering="id")
    def short_id(self, action: Action) -> str:
        return action.short_id

    @admin.display(description=_("owner"), ordering=OWNER_NAME)
    def owner(self, action: Action) -> str:
        if action.user_id and action.user:
            return action.user.get_username()
        if action.session_key:
            return _("session %(key)s…") % {"key": action.session_key[:8]}
        return "—"

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, action: Action) -> str:
        action = service.live(action)
        label = action.get_status_display()
        if action.cancel_requested and action.is_active:
            label = str(_("Cancelling"))
        return format_html('<span class="aa-badge aa-badge--{}">{}</span>', action.status, label)

    @admin.display(description=_("progress"), ordering="percent")
    def progress(self, action: Action) -> str:
        action = service.live(action)
        percent = int(action.percent)
        return format_html(
            '<span class="aa-admin-bar" role="progressbar" aria-valuenow="{0}" '
            'aria-valuemin="0" aria-valuemax="100" title="{1}">'
            '<span class="aa-admin-bar__fill aa-admin-bar__fill--{2}" style="width:{0}%"></span>'
            "</span> {0}%",
            percent,
            action.message,
            action.status,
        )

    @admin.display(description=_("percent"), ordering="percent")
    def percent_display(self, action: Action) -> str:
        """Whole percent, as the bar and the pages show it (the row keeps the float)."""
        return f"{int(action.percent)} %"

    @admin.display(description=_("duration"))
    def duration_display(self, action: Action) -> str:
        seconds = action.duration
        if seconds is None:
            return "—"
        minutes, secs = divmod(int(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            return f"{hours}:{minutes:02d}:{secs:02d}"
        return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f} s"

    # -- detail fields ----------------------------------------------------------------
    @admin.display(description=_("retry of"))
    def retry_of_link(self, action: Action) -> str:
        if action.retry_of_id is None:
            return "—"
        url = reverse("admin:async_actions_action_change", args=[action.retry_of_id])
        return format_html('<a href="{}">{}</a>', url, str(action.retry_of_id)[:8])

    @admin.display(description=_("retries"))
    def retries_list(self, action: Action) -> str:
        retries = list(action.retries.order_by("created_at").values_list("pk", "status"))
        if not retries:
            return "—"
        return format_html_join(
            ", ",
            '<a href="{}">{}</a> ({})',
            (
                (reverse("admin:async_actions_action_change", args=[pk]), str(pk)[:8], status)
                for pk, status in retries
            ),
        )

    @admin.display(description=_("request"))
    def request_json(self, action: Action) -> str:
        return _pretty(action.request)

    @admin.display(description=_("progress data"))
    def data_json(self, action: Action) -> str:
        return _pretty(action.data)

    @admin.display(description=_("response"))
    def response_json(self, action: Action) -> str:
        return _pretty(action.response)

    @admin.display(description=_("files"))
    def file_links(self, action: Action) -> str:
        rows = list(action.files.all())
        if not rows:
            return "—"
        return format_html(
            '<ul class="aa-admin-files">{}</ul>',
            format_html_join(
                "",
                '<li><a href="{}" download>{}</a> ({}, {}, {})</li>',
                (
                    (
                        reverse("admin:async_actions_action_file", args=[action.pk, row.pk]),
                        row.name,
                        row.get_kind_display(),
                        filesizeformat(row.size),
                        row.content_type,
                    )
                    for row in rows
                ),
            ),
        )

    @admin.display(description=_("traceback"))
    def traceback_text(self, action: Action) -> str:
        if not action.traceback:
            return "—"
        return format_html('<pre class="aa-admin-traceback">{}</pre>', action.traceback)

    @admin.display(description=_("log"))
    def log_lines(self, action: Action) -> str:
        if not action.log:
            return "—"
        rows = (
            (
                _log_time(entry.get("time")),
                entry.get("level", ""),
                entry.get("message", ""),
            )
            for entry in action.log
        )
        return format_html(
            '<table class="aa-admin-log"><tbody>{}</tbody></table>',
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Action | None:
        """The row, with the live progress of a handler running in this process."""
        action = super().get_object(request, object_id, from_field)
        return service.live(action) if action is not None else None

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The read-only page, with live progress while the action is unfinished."""
        urls: dict[str, str] = {}
        try:
            pk = uuid.UUID(str(object_id))
        except ValueError:
            pk = None
        if pk is not None:
            urls = {
                "aa_status_url": reverse("admin:async_actions_action_status", args=[pk]),
                "aa_cancel_url": (
                    reverse("admin:async_actions_action_cancel", args=[pk])
                    if self.has_change_permission(request)
                    else ""  # no Cancel button for one who may only view
                ),
                "aa_result_url": reverse("admin:async_actions_action_change", args=[pk]),
            }
        # No Delete button on a read-only record; finished actions go through "Delete
        # selected" or the purge, which say what they remove.
        context = {**(extra_context or {}), **urls, "show_delete": False}
        return super().change_view(request, object_id, form_url, context)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        """No ``?session_key__…=`` filter: Django allows lookups on any local field, and
        ``session_key__startswith`` would reveal a visitor's session cookie, prefix by
        prefix, to whoever may view the list."""
        if lookup.split(LOOKUP_SEP, 1)[0] == "session_key":
            return False
        return super().lookup_allowed(lookup, value, request)

    # -- search: ids as well as text -----------------------------------------------------
    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Action], search_term: str
    ) -> tuple[QuerySet[Action], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip().lower()
        try:
            by_id = queryset.filter(pk=uuid.UUID(term))
        except ValueError:
            hex_part = term.replace("-", "")
            if len(hex_part) < 4 or any(c not in "0123456789abcdef" for c in hex_part):
                return results, may_have_duplicates
            by_id = queryset.filter(_id_prefix(term))
        return results | by_id, may_have_duplicates

    # -- admin actions ----------------------------------------------------------------
    @admin.action(description=_("Cancel selected actions"), permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Action]) -> None:
        outcomes = [service.cancel(pk) for pk in queryset.values_list("pk", flat=True)]
        done = outcomes.count(OpStatus.OK)
        skipped = outcomes.count(OpStatus.ACTION_COMPLETED)
        failed = len(outcomes) - done - skipped
        if done:
            self.message_user(
                request,
                ngettext(
                    "%(n)d action cancelled or asked to stop.",
                    "%(n)d actions cancelled or asked to stop.",
                    done,
                )
                % {"n": done},
                messages.SUCCESS,
            )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "%(n)d action had already finished.",
                    "%(n)d actions had already finished.",
                    skipped,
                )
                % {"n": skipped},
                messages.WARNING,
            )
        if failed:
            self.message_user(
                request,
                _("%(n)d could not be cancelled now; try again.") % {"n": failed},
                messages.ERROR,
            )

    @admin.action(description=_("Retry selected actions"), permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Action]) -> None:
        started, refused = 0, []
        for original in queryset.select_related("user"):
            if original.status not in Action.TERMINAL_STATUSES:
                # A retry beside a running original would do its work twice.
                refused.append(f"{original.short_id}: {original.status}")
                continue
            try:
                result = service.start(
                    original.handler,
                    original.request,
                    user=original.user,
                    session_key=original.session_key or None,
                    client_address=original.client_address or None,  # the same fair share
                    retry_of=original,
                    page=original.page,
                    # A second click, or a second operator, gets the retry already going.
                    idempotency_key=f"retry:{original.pk}",
                )
            except (TypeError, ValueError) as exc:
                refused.append(f"{original.short_id}: {exc}")
                continue
            if result.ok and not result.created and result.action is not None:
                refused.append(f"{original.short_id}: already retried by {result.action.short_id}")
            elif result.ok:
                started += 1
            else:
                refused.append(f"{original.short_id}: {result.status.value}")
        if started:
            self.message_user(
                request,
                ngettext("%(n)d action started again.", "%(n)d actions started again.", started)
                % {"n": started},
                messages.SUCCESS,
            )
        if refused:
            self.message_user(
                request,
                _("Not retried: %(list)s") % {"list": "; ".join(refused)},
                messages.ERROR,
            )

    @admin.action(description=_("Purge expired actions"), permissions=["delete"])
    def purge_expired(self, request: HttpRequest, queryset: QuerySet[Action]) -> None:
        """Delete every expired action (not only the selected ones)."""
        self._purge(request)

    def _purge(self, request: HttpRequest) -> None:
        removed = sum(retention.purge(retention.expired()))
        self.message_user(
            request,
            ngettext("%(n)d expired action removed.", "%(n)d expired actions removed.", removed)
            % {"n": removed},
            messages.SUCCESS,
        )

    # -- extra URLs: live status for the element, cancel, purge -------------------------
    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<uuid:pk>/status/",
                wrap(self.status_view),
                name="async_actions_action_status",
            ),
            path(
                "<uuid:pk>/cancel/",
                wrap(require_POST(self.cancel_view)),
                name="async_actions_action_cancel",
            ),
            path("queue/", wrap(self.queue_view), name="async_actions_action_queue"),
            path(
                "<uuid:pk>/files/<int:file_id>/",
                wrap(self.file_view),
                name="async_actions_action_file",
            ),
            path(
                "purge-expired/",
                wrap(require_POST(self.purge_view)),
                name="async_actions_action_purge",
            ),
            *super().get_urls(),
        ]

    def _get_or_404(self, request: HttpRequest, pk: uuid.UUID) -> Action:
        if not self.has_view_permission(request):
            raise Http404
        action = Action.objects.filter(pk=pk).first()
        if action is None:
            raise Http404
        return service.live(action)

    def status_view(self, request: HttpRequest, pk: uuid.UUID) -> JsonResponse:
        action = self._get_or_404(request, pk)
        snapshot = action.snapshot()
        snapshot["result_url"] = reverse("admin:async_actions_action_change", args=[pk])
        return JsonResponse(snapshot)

    def file_view(self, request: HttpRequest, pk: uuid.UUID, file_id: int) -> HttpResponseBase:
        """One of the action's files, for staff who may view actions."""
        action = self._get_or_404(request, pk)
        row = action.files.filter(pk=file_id).first()
        if row is None:
            raise Http404
        return http.file_response(row)

    def cancel_view(self, request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
        self._get_or_404(request, pk)
        if not self.has_change_permission(request):  # may see it, may not control it
            raise PermissionDenied
        outcome = service.cancel(pk)
        return JsonResponse({"status": outcome.value}, status=http.outcome(outcome).status)

    def purge_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_delete_permission(request):
            raise Http404
        self._purge(request)
        return redirect("admin:async_actions_action_changelist")

    def queue_view(self, request: HttpRequest) -> HttpResponse:
        """What waits and what runs, per handler and per worker (staff with view_action)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        handlers = queue.queue_by_handler(now)
        for row in handlers:
            oldest = row["oldest_pending"]
            row["oldest_wait"] = (now - oldest).total_seconds() if oldest else None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Queue"),
            "opts": self.model._meta,
            "handlers": handlers,
            "workers": queue.running_by_worker(),
            "totals": {
                key: sum(row[key] for row in handlers)
                for key in ("pending", "scheduled", "running")
            },
            "changelist_url": reverse("admin:async_actions_action_changelist"),
        }
        return TemplateResponse(request, "admin/async_actions/action/queue.html", context)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if any("\x00" in text for item in request.GET.lists() for text in (item[0], *item[1])):
            # A filter or search with a NUL character is a 500 on PostgreSQL: refuse it.
            return HttpResponseBadRequest(str(_("A query parameter holds a NUL character.")))
        extra_context = {
            **(extra_context or {}),
            "aa_purge_url": reverse("admin:async_actions_action_purge"),
            "aa_can_purge": self.has_delete_permission(request),
            "aa_queue_url": reverse("admin:async_actions_action_queue"),
        }
        return super().changelist_view(request, extra_context)


def _log_time(value: Any) -> str:
    """Log records keep a Unix timestamp; show it in the site's time zone."""
    try:
        moment = datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError):
        return ""
    return timezone.localtime(moment).strftime("%H:%M:%S.%f")[:-3]


def _id_prefix(term: str) -> Q:
    """Ids starting with ``term`` (the short id in lists is the first 8 characters)."""
    return Q(id__startswith=term)
