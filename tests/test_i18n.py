"""Translations: Russian and German ship as compiled catalogs, complete and current, and
the pages (the script's strings included) render in the visitor's language."""

from __future__ import annotations

import ast
import contextlib
import gettext
import html
import json
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone, translation

import async_actions
from async_actions import files, service
from async_actions.exceptions import FileMissing
from async_actions.models import Action
from async_actions.testing import assert_failed, run_inline
from tests.helpers import need
from tests.views import EchoView, ExportView, GateView

PACKAGE = Path(async_actions.__file__).resolve().parent  # as installed
LOCALE = PACKAGE / "locale"
LANGUAGES = ["ru", "de"]


def _entries(po: Path) -> list[dict[str, Any]]:
    """(flags, msgid, msgid_plural, msgstrs) of each entry but the header."""
    entries = []
    for block in po.read_text(encoding="utf-8").split("\n\n"):
        fields: dict[str, list[str]] = {}
        current = None
        flags = ""
        for line in block.splitlines():
            if line.startswith("#,"):
                flags += line
            match = re.match(r"^(msgid_plural|msgid|msgstr(?:\[\d\])?) (\".*\")$", line)
            if match:
                current = match.group(1)
                fields[current] = [match.group(2)]
            elif line.startswith('"') and current:
                fields[current].append(line)
        if "msgid" not in fields:
            continue
        text = {
            key: "".join(ast.literal_eval(part) for part in parts) for key, parts in fields.items()
        }
        if not text["msgid"]:
            continue  # the header
        entries.append(
            {
                "flags": flags,
                "msgid": text["msgid"],
                "plural": text.get("msgid_plural"),
                "msgstrs": [value for key, value in text.items() if key.startswith("msgstr")],
            }
        )
    return entries


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalog_is_complete_and_not_fuzzy(language: str) -> None:
    entries = _entries(LOCALE / language / "LC_MESSAGES" / "django.po")
    assert len(entries) > 80
    assert [e["msgid"] for e in entries if "fuzzy" in e["flags"]] == []
    assert [e["msgid"] for e in entries if not all(e["msgstrs"])] == []
    # Placeholders survive translation ({name} ones too); a plural's forms may name the
    # number or not ("every second" / "every %(seconds)s seconds").
    placeholders = re.compile(r"%\(\w+\)[sd]|%s|\{\w+\}")
    for entry in entries:
        wanted = sorted(placeholders.findall(entry["msgid"]))
        for msgstr in entry["msgstrs"]:
            if entry["plural"]:
                allowed = set(wanted) | set(placeholders.findall(entry["plural"]))
                assert set(placeholders.findall(msgstr)) <= allowed, entry
            else:
                assert sorted(placeholders.findall(msgstr)) == wanted, entry


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalogs as ``makemessages`` writes them from today's source: a copy of the
    package (its catalogs included) updated by Django's own extraction and merge."""
    need(
        bool(shutil.which("xgettext") and shutil.which("msgmerge")),
        "GNU gettext (xgettext, msgmerge) is not installed",
    )
    copy = tmp_path_factory.mktemp("catalogs") / "async_actions"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
    with contextlib.chdir(copy):
        call_command("makemessages", locale=LANGUAGES, verbosity=0)
    return copy / "locale"


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalog_holds_every_string_of_the_source(regenerated: Path, language: str) -> None:
    """A string marked for translation but missing from the catalog comes back from
    makemessages untranslated or fuzzy; one the source no longer has becomes obsolete."""
    fresh = _entries(regenerated / language / "LC_MESSAGES" / "django.po")
    shipped = _entries(LOCALE / language / "LC_MESSAGES" / "django.po")
    assert [e["msgid"] for e in fresh if "fuzzy" in e["flags"]] == []
    assert [e["msgid"] for e in fresh if not all(e["msgstrs"])] == []
    assert sorted(e["msgid"] for e in fresh) == sorted(e["msgid"] for e in shipped)


@pytest.mark.parametrize("language", LANGUAGES)
def test_compiled_catalog_matches_the_source(language: str) -> None:
    directory = LOCALE / language / "LC_MESSAGES"
    with open(directory / "django.mo", "rb") as mo:
        catalog = gettext.GNUTranslations(mo)
    for entry in _entries(directory / "django.po"):
        if entry["plural"]:
            assert catalog.ngettext(entry["msgid"], entry["plural"], 1) == entry["msgstrs"][0]
        else:
            assert catalog.gettext(entry["msgid"]) == entry["msgstrs"][0], entry["msgid"]


@pytest.mark.django_db(transaction=True)
def test_the_processing_page_renders_in_russian(runner: Any) -> None:
    client = Client(HTTP_ACCEPT_LANGUAGE="ru")
    client.get(reverse("gate_view:initial"))
    session = client.session.session_key or client.session.save() or client.session.session_key
    action = Action.objects.create(
        handler=GateView.handler_name(),
        session_key=session,
        status="running",
        percent=40,
        message="Шаг 2",
    )
    response = client.get(reverse("gate_view:processing", kwargs={"pk": action.pk}))
    assert response.status_code == 200
    page = response.content.decode()
    assert '<html lang="ru">' in page
    assert "Выполняется" in page  # the status
    assert "Отменить" in page  # the cancel button
    assert "Эту страницу можно закрыть" in page
    strings = json.loads(html.unescape(re.search(r'data-strings="([^"]*)"', page).group(1)))
    assert strings["elapsed"] == "Прошло %s"  # the script speaks Russian too
    assert strings["cancelled"] == "Отменено"
    for english in ("Running", ">Cancel<", "You can close this page"):
        assert english not in page


@pytest.mark.django_db(transaction=True)
def test_the_result_page_renders_in_german(runner: Any) -> None:
    client = Client(HTTP_ACCEPT_LANGUAGE="de")
    client.get(reverse("echo_view:initial"))
    client.session.save()
    action = Action.objects.create(
        handler=EchoView.handler_name(),
        session_key=client.session.session_key,
        status="succeeded",
        percent=100,
        response={"echo": "hallo"},
    )
    page = client.get(reverse("echo_view:result", kwargs={"pk": action.pk})).content.decode()
    assert "Fertig" in page
    assert "Weitere starten" in page


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path)
    return tmp_path


@pytest.mark.django_db
def test_a_german_visitor_reads_the_files_the_schedule_and_a_missing_file_in_german(
    media: Path,
) -> None:
    client = Client(HTTP_ACCEPT_LANGUAGE="de")
    client.get(reverse("export_view:initial"))
    client.session.save()
    owner = {"handler": ExportView.handler_name(), "session_key": client.session.session_key}
    done = Action.objects.create(**owner, status="succeeded", percent=100, response={"n": 1})
    kept = files.add_file(done.pk, "bericht.csv", b"a,b\n")
    page = client.get(reverse("export_view:result", kwargs={"pk": done.pk})).content.decode()
    link = reverse("export_view:file", kwargs={"pk": done.pk, "file_id": kept.row.pk})
    assert 'aria-label="Dateien"' in page and f'href="{link}" download>bericht.csv<' in page
    assert "4\xa0Bytes" in page  # the size, in German too

    later = Action.objects.create(
        **owner, status="pending", run_after=timezone.now() + timedelta(hours=1)
    )
    page = client.get(reverse("export_view:processing", kwargs={"pk": later.pk})).content.decode()
    assert "Geplant für" in page and "Scheduled for" not in page
    assert "Wartet auf den Start" in page

    # The error a handler reads when a file went missing (shown on the failed page).
    (media / kept.path).unlink()
    with translation.override("de"), pytest.raises(FileMissing) as missing:
        files.StoredFile(kept.row).read()
    assert str(missing.value) == "Die Datei „bericht.csv“ ist nicht mehr im Speicher."


@pytest.mark.django_db
def test_errors_written_by_the_package_follow_the_active_language() -> None:
    """Stored once, when no visitor is there: in the language active then (in a worker
    or the thread runner, the site's LANGUAGE_CODE)."""
    with translation.override("de"), run_inline():
        failed = service.start("tests.boom", {})
    assert_failed(failed, "Die Aktion ist wegen eines unerwarteten Fehlers fehlgeschlagen.")
