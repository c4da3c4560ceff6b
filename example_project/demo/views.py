"""The demo's pages: one per kind of action, and the visitor's own list."""

import csv
import io

from django.contrib import messages
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from async_actions import ownership
from async_actions.exceptions import ActionError
from async_actions.service import perform
from example_project.demo import tasks


def _mine(request):
    """The visitor's actions: their user's, or their anonymous session's."""
    return ownership.owned_actions(request.user, request.session)


def home(request):
    return render(request, "home.html", {"recent": _mine(request)[:5]})


def my_actions(request):
    return render(request, "demo/my_actions.html", {"actions": _mine(request)[:50]})


def action_status(request, pk):
    """Status JSON for any of the visitor's actions (the My actions page polls it when
    its WebSockets cannot connect)."""
    action = _mine(request).filter(pk=pk).first()
    if action is None:
        raise Http404("No such action.")
    return JsonResponse(action.snapshot(), headers={"Cache-Control": "no-store"})


@require_POST
def start_thumbnails(request):
    """Starts a plain function with perform(); the same action is visible in the API."""
    user, session_key = ownership.new_owner(request.user, request.session)
    result = perform(
        tasks.make_thumbnails, kwargs={"count": 12}, user=user, session_key=session_key
    )
    if not result.ok:
        messages.error(request, _("The thumbnails could not be started. Try again."))
    else:
        messages.success(request, _("Thumbnails started."))
    return redirect("my_actions")


# -- the report demo: an AsyncFormView with a few stages of progress ----------------------
from django import forms  # noqa: E402

from async_actions.views import AsyncFormView  # noqa: E402


class ReportForm(forms.Form):
    title = forms.CharField(max_length=80, initial="Quarterly sales")
    rows = forms.IntegerField(min_value=1, max_value=50, initial=8, help_text="Rows to compute.")
    seconds_per_stage = forms.FloatField(
        min_value=0, max_value=10, initial=1.0, help_text="How long each of the 5 stages takes."
    )


REPORT_STAGES = ["Loading data", "Cleaning rows", "Computing totals", "Ranking", "Formatting"]


class ReportView(AsyncFormView):
    """Builds a small report in five stages; cancellable between and during stages."""

    form_class = ReportForm
    title = "Build a report"
    template_name = "demo/report_form.html"
    result_template_name = "demo/report_result.html"

    def run(self, ctx, data):
        rows = int(data["rows"])
        pause = float(data["seconds_per_stage"])
        total = len(REPORT_STAGES)
        for index, stage in enumerate(REPORT_STAGES):
            ctx.set_progress(
                100 * index / total,
                f"Stage {index + 1} of {total}: {stage}",
                {"stage": index + 1, "stages": total},
            )
            if ctx.wait_cancelled(pause):
                ctx.raise_if_cancelled()
        ctx.set_progress(100, "Report ready")
        table = [{"row": i + 1, "value": (i * 37) % 101} for i in range(rows)]
        total = sum(r["value"] for r in table)
        # The CSV export is kept with the action: the result page links it, for its owner.
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["row", "value"])
        writer.writerows([row["row"], row["value"]] for row in table)
        writer.writerow(["total", total])
        ctx.attach_file("report.csv", out.getvalue(), content_type="text/csv")
        return {"title": data["title"], "rows": table, "total": total}


# -- CSV import: an uploaded file, read row by row ------------------------------------
class ImportForm(forms.Form):
    file = forms.FileField(help_text="A CSV file with the columns name and amount.")
    seconds_per_row = forms.FloatField(
        min_value=0, max_value=2, initial=0.15, help_text="Slow it down to watch it."
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > 2_000_000:
            raise forms.ValidationError("The file is larger than 2 MB.")
        return upload


class ImportView(AsyncFormView):
    """Imports the rows of an uploaded CSV one by one; bad rows are reported, not fatal."""

    form_class = ImportForm
    title = "Import a CSV file"
    template_name = "demo/import_form.html"
    result_template_name = "demo/import_result.html"

    def run(self, ctx, data):
        text = data["file"].read().decode("utf-8-sig", errors="replace")  # a StoredFile
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            raise ActionError("The file has no rows under a header line.")
        imported, problems, total = 0, [], 0.0
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            ctx.raise_if_cancelled()
            ctx.set_progress(
                100 * (number - 2) / len(rows),
                f"Row {number - 1} of {len(rows)}: {row.get('name') or '?'}",
            )
            try:
                total += float(row.get("amount") or "")
                imported += 1
            except ValueError:
                problems.append({"line": number, "value": row.get("amount") or ""})
                ctx.log.warning("Line %d: %r is not a number", number, row.get("amount"))
            ctx.wait_cancelled(float(data["seconds_per_row"]))
        return {"imported": imported, "problems": problems, "total": round(total, 2)}


# -- A countdown: long enough to cancel --------------------------------------------------
class CountdownForm(forms.Form):
    seconds = forms.IntegerField(min_value=1, max_value=600, initial=30)


class CountdownView(AsyncFormView):
    """Counts down one second at a time; the processing page's Cancel button stops it."""

    form_class = CountdownForm
    title = "A long countdown"
    template_name = "demo/countdown_form.html"

    def run(self, ctx, data):
        seconds = int(data["seconds"])
        for done in range(seconds):
            ctx.set_progress(100 * done / seconds, f"{seconds - done} seconds left")
            if ctx.wait_cancelled(1.0):
                ctx.raise_if_cancelled()
        return {"seconds": seconds}


# -- An action that fails ------------------------------------------------------------------
class FailingForm(forms.Form):
    fail_at = forms.IntegerField(
        min_value=0, max_value=100, initial=60, help_text="Percent at which it fails."
    )


class FailingView(AsyncFormView):
    """Makes progress, then fails with a message meant for the user."""

    form_class = FailingForm
    title = "An action that fails"
    template_name = "demo/failing_form.html"

    def run(self, ctx, data):
        fail_at = int(data["fail_at"])
        for percent in range(0, fail_at, 10):
            ctx.set_progress(percent, f"Syncing with the partner system ({percent}%)")
            ctx.wait_cancelled(0.3)
        raise ActionError("The partner system refused the sync: account 4711 is locked.")


SAMPLE_CSV = "name,amount\n" + "".join(
    f"{name},{amount}\n"
    for name, amount in [
        ("Ada", "12.50"), ("Brian", "7"), ("Chen", "n/a"), ("Dana", "19.99"),
        ("Emil", "3.25"), ("Farah", "41"), ("Goran", "twelve"), ("Hana", "8.75"),
        ("Ivo", "15"), ("Juno", "22.10"), ("Kai", "5"), ("Lena", "30"),
    ]
)  # fmt: skip


def sample_csv(request):
    response = HttpResponse(SAMPLE_CSV, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="sample-import.csv"'
    return response
