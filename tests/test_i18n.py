"""Translations: Russian and German ship as compiled catalogs, complete and current, and
the pages (the script's strings included) render in the visitor's language."""

from __future__ import annotations

import ast
import gettext
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

import async_actions
from async_actions.models import Action
from tests.views import EchoView, GateView

LOCALE = Path(async_actions.__file__).resolve().parent / "locale"  # as installed
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
    # Placeholders survive translation.
    for entry in entries:
        wanted = sorted(re.findall(r"%\(\w+\)[sd]|%s", entry["msgid"]))
        for msgstr in entry["msgstrs"]:
            assert sorted(re.findall(r"%\(\w+\)[sd]|%s", msgstr)) == wanted, entry


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
