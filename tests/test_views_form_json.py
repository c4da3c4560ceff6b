"""docs/views.md's table of what ``run()`` receives from each form field is what
``AsyncFormView`` makes of a real submission."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django import forms
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from async_actions.views import AsyncFormView

DOC = Path(__file__).resolve().parent.parent / "docs" / "views.md"

CHOICES = [("a", "A"), ("b", "B"), ("c", "C")]


def groups() -> Any:
    return Group.objects.all()


#: Each documented field, in the table's order: (a factory of the field, what the
#: browser posts for it; None posts a file).
FIELDS: dict[str, tuple[Any, Any]] = {
    "CharField": (lambda: forms.CharField(), "ada@example.com"),
    "EmailField": (lambda: forms.EmailField(), "ada@example.com"),
    "RegexField": (lambda: forms.RegexField(r".+@.+"), "ada@example.com"),
    "SlugField": (lambda: forms.SlugField(), "q4-report"),
    "URLField": (lambda: forms.URLField(assume_scheme="https"), "https://example.com/feed"),
    "ChoiceField": (lambda: forms.ChoiceField(choices=CHOICES), "b"),
    "TypedChoiceField(coerce=int)": (
        lambda: forms.TypedChoiceField(choices=[("1", "1"), ("2", "2")], coerce=int),
        "2",
    ),
    "MultipleChoiceField": (lambda: forms.MultipleChoiceField(choices=CHOICES), ["a", "c"]),
    "IntegerField": (lambda: forms.IntegerField(), "42"),
    "FloatField": (lambda: forms.FloatField(), "2.5"),
    "DecimalField": (lambda: forms.DecimalField(decimal_places=2), "12.50"),
    "BooleanField": (lambda: forms.BooleanField(), "on"),
    "NullBooleanField": (lambda: forms.NullBooleanField(), "unknown"),
    "DateField": (lambda: forms.DateField(), "2026-11-27"),
    "DateTimeField": (lambda: forms.DateTimeField(), "2026-11-27 10:30:15.123456"),
    "TimeField": (lambda: forms.TimeField(), "10:30"),
    "DurationField": (lambda: forms.DurationField(), "1 02:00:00"),
    "UUIDField": (lambda: forms.UUIDField(), "0b6f6e52-8d1c-4f1e-9a55-0d7ad2a4c0de"),
    "GenericIPAddressField": (lambda: forms.GenericIPAddressField(), "192.0.2.1"),
    "JSONField": (lambda: forms.JSONField(), '{"b": [1, 2]}'),
    "ModelChoiceField": (lambda: forms.ModelChoiceField(groups()), "3"),
    "ModelMultipleChoiceField": (lambda: forms.ModelMultipleChoiceField(groups()), ["3", "4"]),
    "FileField": (lambda: forms.FileField(), None),
}


def documented() -> list[tuple[str, str]]:
    """(field name, JSON cell) of each row of the table, one per field named in a row."""
    section = DOC.read_text().split("### What `run()` receives from a form", 1)[1]
    table = section.split("\n\n")[2]  # after the introduction paragraph and its table intro
    rows = []
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", cells[0]):
            rows.append((name, re.findall(r"`([^`]+)`", cells[2])[0]))
    return rows


def test_every_field_in_the_table_is_tested_here():
    assert [name for name, _ in documented()] == list(FIELDS)


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "expected"), documented())
def test_run_gets_the_documented_json(name: str, expected: str, tmp_path: Path):
    Group.objects.bulk_create([Group(pk=3, name="three"), Group(pk=4, name="four")])
    make, posted = FIELDS[name]
    form_class = type("Form", (forms.Form,), {"value": make()})
    files = {}
    if posted is None:
        files = {"value": SimpleUploadedFile("report.csv", b"a,b\n1,2\n")}
    data = {"value": posted} if posted is not None else {}
    form = form_class(data=data, files=files)
    assert form.is_valid(), form.errors
    with override_settings(MEDIA_ROOT=str(tmp_path)):
        got = AsyncFormView().form_data(form)["value"]
    assert json.loads(json.dumps(got)) == got  # JSON as it is stored
    if name == "FileField":  # a marker naming the upload in storage, under the action
        assert list(got) == ["$file"] and got["$file"].endswith("/input/report.csv")
        assert (tmp_path / got["$file"]).read_bytes() == b"a,b\n1,2\n"
    else:
        assert got == json.loads(expected)


@pytest.mark.django_db
def test_empty_optional_fields_give_empty_text_or_null():
    form_class = type(
        "Form",
        (forms.Form,),
        {
            "text": forms.CharField(required=False),
            "number": forms.IntegerField(required=False),
            "day": forms.DateField(required=False),
            "amount": forms.DecimalField(required=False),
        },
    )
    form = form_class(data={})
    assert form.is_valid()
    got = AsyncFormView().form_data(form)
    assert got == {"text": "", "number": None, "day": None, "amount": None}
