from django.shortcuts import render

from async_actions.models import Action


def home(request):
    if request.user.is_authenticated:
        recent = Action.objects.owned_by(request.user)[:10]
    else:
        recent = Action.objects.owned_by(session_key=request.session.session_key)[:10]
    return render(request, "home.html", {"recent": recent})


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
        return {"title": data["title"], "rows": table, "total": sum(r["value"] for r in table)}
