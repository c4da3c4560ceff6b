"""Views used by the view, consumer and browser tests (importable by dotted path)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.files.base import ContentFile
from django.utils import timezone

from async_actions.context import ActionContext, ActionError
from async_actions.views import AsyncFormView, BaseAsyncView
from tests.actions import gate


class EchoView(BaseAsyncView):
    def run(self, ctx: ActionContext, data: Any) -> Any:
        ctx.set_progress(50, "echoing")
        return {"echo": data}


class GateView(BaseAsyncView):
    """Runs until the gate named in the POST opens, or it is cancelled."""

    def run(self, ctx: ActionContext, data: Any) -> Any:
        ctx.set_progress(10, "waiting at the gate")
        while not gate(data.get("gate", "view")).wait(0.01):
            ctx.raise_if_cancelled()
        return "released"


class BoomView(BaseAsyncView):
    def run(self, ctx: ActionContext, data: Any) -> Any:
        raise RuntimeError("secret path /etc/passwd in SQL")


class UserErrorView(BaseAsyncView):
    def run(self, ctx: ActionContext, data: Any) -> Any:
        raise ActionError("Row 3 is not a number")


class UploadForm(forms.Form):
    count = forms.IntegerField(min_value=1, max_value=10)
    when = forms.DateField()
    upload = forms.FileField()


class UploadView(AsyncFormView):
    form_class = UploadForm

    def run(self, ctx: ActionContext, data: Any) -> Any:
        upload = data["upload"]
        with upload.open() as handle:
            content = handle.read().decode()
        return {
            "count": data["count"],
            "when": data["when"],
            "name": upload.name,
            "size": upload.size,
            "content_type": upload.content_type,
            "content": content,
        }


class LateUploadForm(forms.Form):
    gate = forms.CharField()
    upload = forms.FileField()


class LateUploadView(AsyncFormView):
    """Reads its upload only once the gate named in the form opens."""

    form_class = LateUploadForm

    def run(self, ctx: ActionContext, data: Any) -> Any:
        while not gate(data["gate"]).wait(0.01):
            ctx.raise_if_cancelled()
        return data["upload"].read().decode()


class PairForm(forms.Form):
    first = forms.FileField()
    second = forms.FileField()


class PairUploadView(AsyncFormView):
    form_class = PairForm

    def run(self, ctx: ActionContext, data: Any) -> Any:
        return [data["first"].read().decode(), data["second"].read().decode()]


class ExportView(BaseAsyncView):
    """Attaches the files the POST names (``file:name`` → content, in name order), or
    returns one File."""

    def run(self, ctx: ActionContext, data: Any) -> Any:
        if data.get("return_file"):
            return ContentFile(data["return_file"].encode(), name="returned.txt")
        names = []
        for key in sorted(data):  # jsonb (PostgreSQL) does not keep the keys' order
            if key.startswith("file:"):
                names.append(ctx.attach_file(key.removeprefix("file:"), data[key]).name)
        return {"attached": names}


class StepsView(BaseAsyncView):
    """Waits at its gate, then reports ``steps`` progress updates and succeeds."""

    def run(self, ctx: ActionContext, data: Any) -> Any:
        ctx.set_progress(0, "ready")
        while not gate(data.get("gate", "steps")).wait(0.01):
            ctx.raise_if_cancelled()
        steps = int(data.get("steps", 50))
        for i in range(steps):
            ctx.set_progress(100 * (i + 1) / steps, f"step {i + 1}")
        return steps


class ExclusiveView(GateView):
    """One at a time site-wide; a second start while one runs is refused."""

    concurrency_key = "tests.exclusive-view"
    on_busy = "refuse"
    time_limit = 120


class ShoutView(BaseAsyncView):
    """Shows the visitor's own text as the progress message and data for a while."""

    def run(self, ctx: ActionContext, data: Any) -> Any:
        text = str(data.get("text", ""))
        ctx.set_progress(42, text, {"html": text})
        ctx.wait_cancelled(float(data.get("hold", 3)))
        return {"text": text}


class SummaryView(BaseAsyncView):
    """Returns a result of every JSON kind, for the default result page."""

    def run(self, ctx: ActionContext, data: Any) -> Any:
        return {
            "counted": 10,
            "title": "<b>Quarterly</b>",
            "ok": True,
            "missing": None,
            "rows": [{"name": "a", "value": 1}, {"name": "b", "value": 2}],
        }


class MembersOnlyView(LoginRequiredMixin, EchoView):
    """A site's mixin on its view class guards every page, not only the start page."""


class LaterForm(forms.Form):
    """Pick how many seconds from now the work may start."""

    seconds = forms.IntegerField(min_value=0, max_value=86_400)


class LaterView(AsyncFormView):
    """A delayed start chosen in the form, through the ``get_run_after`` hook."""

    form_class = LaterForm

    def get_run_after(self, form: forms.BaseForm | None = None) -> timedelta | None:
        assert form is not None  # AsyncFormView hands the valid form
        return timedelta(seconds=form.cleaned_data["seconds"])

    def run(self, ctx: ActionContext, data: Any) -> Any:
        return {"ran_at": timezone.now().isoformat()}
