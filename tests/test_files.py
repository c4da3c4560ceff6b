"""Files: uploads stored through FILE_STORAGE under the action's folder and read by
``run()`` (in this process or a worker elsewhere), result files attached by handlers and
served only to whoever may see the action, and both removed with the action."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.checks import run_checks
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from async_actions import files, service
from async_actions.models import Action, ActionFile
from async_actions.runners import reset_runner
from tests.actions import gate
from tests.helpers import TASKS_RUNNER, wait_finished, wait_for
from tests.views import ExportView, UploadView

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    return root


def user(name: str, *perms: str, **extra: Any) -> Any:
    made = get_user_model().objects.create_user(name, password="pw", **extra)
    made.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="async_actions", codename__in=perms)
    )
    return made


def logged_in(who: Any) -> Client:
    client = Client()
    client.force_login(who)
    return client


def action_id(response: Any) -> str:
    return response["Location"].rstrip("/").rsplit("/", 1)[-1]


def upload(client: Client, content: bytes = b"a,b\n1,2\n", name: str = "rows.csv") -> Any:
    return client.post(
        reverse("upload_view:initial"),
        {"count": "2", "when": "2024-02-29", "upload": SimpleUploadedFile(name, content)},
    )


def stored(media: Path) -> list[str]:
    """Every file under the media root, as storage names (folders may go meanwhile)."""
    names = []
    for folder, _dirs, found in os.walk(media):  # os.walk skips a folder removed under it
        names += [str((Path(folder) / name).relative_to(media)) for name in found]
    return sorted(names)


# -- uploads --------------------------------------------------------------------------------


def test_an_upload_is_read_by_run_and_goes_with_the_purge(media: Path, runner: Any) -> None:
    client = Client()
    response = upload(client)
    assert response.status_code == 303
    action = wait_finished(action_id(response))
    assert action.status == "succeeded", action.traceback
    assert action.response["content"] == "a,b\n1,2\n"
    path = f"async_actions/{action.pk}/input/rows.csv"
    assert stored(media) == [path]
    row = ActionFile.objects.get(action=action)
    assert (row.kind, row.name, row.path, row.size) == ("input", "rows.csv", path, 8)
    assert row.content_type == "text/csv"

    Action.objects.filter(pk=action.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    call_command("async_actions_purge", stdout=io.StringIO())
    assert not Action.objects.filter(pk=action.pk).exists()
    assert not ActionFile.objects.exists()
    assert stored(media) == []
    assert not (media / "async_actions" / str(action.pk)).exists()  # no empty folders left


def test_a_refused_start_keeps_no_upload(media: Path, runner: Any) -> None:
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "MAX_ACTIVE_PER_OWNER": 1}):
        reset_runner()
        client = logged_in(user("alice"))
        gate_response = client.post(
            reverse("late_upload_view:initial"),
            {"gate": "refused", "upload": SimpleUploadedFile("a.txt", b"first")},
        )
        assert gate_response.status_code == 303
        try:
            refused = upload(client)
            assert refused.status_code == 429
            first = action_id(gate_response)
            assert stored(media) == [f"async_actions/{first}/input/a.txt"]
            assert ActionFile.objects.count() == 1
        finally:
            gate("refused").set()
        wait_finished(action_id(gate_response))
    reset_runner()


def test_an_upload_over_the_size_or_count_limit_starts_nothing(media: Path) -> None:
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "MAX_FILE_BYTES": 4}):
        response = upload(Client(), content=b"12345")
    assert response.status_code == 413
    assert "MAX_FILE_BYTES" in response.content.decode()
    assert not Action.objects.exists() and stored(media) == []
    pair = {
        "first": SimpleUploadedFile("1.txt", b"one"),
        "second": SimpleUploadedFile("2.txt", b"two"),
    }
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "MAX_FILES_PER_ACTION": 1}):
        response = Client().post(reverse("pair_upload_view:initial"), pair)
    assert response.status_code == 413
    assert "MAX_FILES_PER_ACTION" in response.content.decode()
    # The first file was stored before the second was refused: it is gone again.
    assert not Action.objects.exists() and stored(media) == []
    assert not ActionFile.objects.exists()


def test_two_uploads_of_one_form_reach_run(media: Path, runner: Any) -> None:
    pair = {
        "first": SimpleUploadedFile("1.txt", b"one"),
        "second": SimpleUploadedFile("2.txt", b"two"),
    }
    action = wait_finished(action_id(Client().post(reverse("pair_upload_view:initial"), pair)))
    assert action.status == "succeeded", action.traceback
    assert action.response == ["one", "two"]
    assert len(stored(media)) == 2


def test_a_missing_upload_fails_with_a_readable_error(media: Path, runner: Any) -> None:
    client = Client()
    response = client.post(
        reverse("late_upload_view:initial"),
        {"gate": "missing", "upload": SimpleUploadedFile("data.csv", b"x")},
    )
    pk = action_id(response)
    (media / f"async_actions/{pk}/input/data.csv").unlink()
    gate("missing").set()
    action = wait_finished(pk)
    assert action.status == "failed"
    assert action.error.startswith("The uploaded file “data.csv” is no longer in storage")
    assert "unexpected" not in action.error
    result = client.get(reverse("late_upload_view:result", kwargs={"pk": pk}))
    assert "is no longer in storage" in result.content.decode()


def test_uploads_go_at_finish_when_asked_and_results_stay(media: Path, runner: Any) -> None:
    with override_settings(
        ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "DELETE_UPLOADS_AT_FINISH": True}
    ):
        action = wait_finished(action_id(upload(Client())))
        assert action.status == "succeeded", action.traceback
        # action_finished comes right after the final write: wait for its receiver.
        wait_for(lambda: stored(media) == [] and not ActionFile.objects.exists())
        export = wait_finished(action_id(Client().post("/t/export/", {"file:out.txt": "kept"})))
        assert stored(media) == [f"async_actions/{export.pk}/output/out.txt"]


def test_a_retry_reads_the_uploads_of_the_action_it_retries(media: Path, runner: Any) -> None:
    original = wait_finished(action_id(upload(Client())))
    retry = service.start(UploadView.handler_name(), original.request, retry_of=original)
    assert retry.action is not None
    again = wait_finished(retry.action.pk)
    assert again.status == "succeeded", again.traceback
    assert again.response["content"] == "a,b\n1,2\n"


def test_a_marker_for_another_actions_upload_stays_a_plain_value(media: Path, runner: Any) -> None:
    """A form's JSON field could carry ``{"$file": path}``: it never opens another's file."""
    victim = wait_finished(action_id(upload(Client())))
    path = victim.request["upload"]["$file"]
    other = Action.objects.create(handler="x", request={"upload": {"$file": path}})
    resolved = files.resolve_inputs(other.pk, other.request)
    assert resolved == {"upload": {"$file": path}}
    mine = files.resolve_inputs(victim.pk, victim.request)
    assert isinstance(mine["upload"], files.StoredFile) and mine["upload"].read() == b"a,b\n1,2\n"


# -- a worker elsewhere ---------------------------------------------------------------------

WORKER_SETTINGS = """
from tests.settings import *  # noqa
DATABASES = {databases!r}
MEDIA_ROOT = {media!r}
ASYNC_ACTIONS = {{**ASYNC_ACTIONS, **{runner!r}}}
"""


def run_worker(tmp_path: Path, media_root: str) -> None:
    """``db_worker`` in another working directory, on this test's database."""
    folder = tmp_path / "worker_settings"
    folder.mkdir(exist_ok=True)
    databases = {"default": {**connection.settings_dict, "NAME": connection.settings_dict["NAME"]}}
    (folder / "worker_settings.py").write_text(
        WORKER_SETTINGS.format(databases=databases, media=media_root, runner=TASKS_RUNNER)
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "django", "db_worker", "--batch", "--no-startup-delay"],
        cwd=elsewhere,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "worker_settings",
            "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)]),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_a_worker_in_another_directory_reads_the_upload(
    media: Path, tmp_path: Path, settings: Any
) -> None:
    with override_settings(ASYNC_ACTIONS=TASKS_RUNNER):
        reset_runner()
        response = upload(Client())
        assert Action.objects.get(pk=action_id(response)).status == "pending"
        run_worker(tmp_path, str(media))
    reset_runner()
    action = Action.objects.get(pk=action_id(response))
    assert action.status == "succeeded", action.error + action.traceback
    assert action.response["content"] == "a,b\n1,2\n"


@pytest.mark.slow
def test_a_relative_media_root_is_warned_and_its_worker_says_what_is_missing(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug of issue 19: relative to each process's directory, the worker finds nothing."""
    web = tmp_path / "web"
    web.mkdir()
    monkeypatch.chdir(web)
    settings.MEDIA_ROOT = "media"
    with override_settings(ASYNC_ACTIONS=TASKS_RUNNER):
        reset_runner()
        assert "async_actions.W090" in {m.id for m in run_checks()}
        response = upload(Client())
        assert (web / "media" / f"async_actions/{action_id(response)}/input/rows.csv").exists()
        run_worker(tmp_path, "media")
    reset_runner()
    action = Action.objects.get(pk=action_id(response))
    assert action.status == "failed"
    assert action.error.startswith("The uploaded file “rows.csv” is no longer in storage")


# -- checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_root", "runner_settings", "warned"),
    [
        ("", TASKS_RUNNER, True),
        ("media", TASKS_RUNNER, True),
        ("/srv/shared/media", TASKS_RUNNER, False),
        ("", {}, False),  # the ThreadRunner: one process, one directory
    ],
)
def test_a_local_storage_without_an_absolute_folder_is_warned_in_the_scaled_shape(
    settings: Any, media_root: str, runner_settings: dict[str, Any], warned: bool
) -> None:
    settings.MEDIA_ROOT = media_root
    with override_settings(ASYNC_ACTIONS=runner_settings):
        reset_runner()
        ids = {message.id for message in run_checks()}
    reset_runner()
    assert ("async_actions.W090" in ids) is warned


@pytest.mark.parametrize("name", ["nowhere", "no.such.Storage", "async_actions.models.Action"])
def test_a_file_storage_that_names_no_storage_is_an_error(name: str) -> None:
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "FILE_STORAGE": name}):
        errors = [m for m in run_checks() if m.id == "async_actions.E090"]
    assert len(errors) == 1 and name in errors[0].msg


def test_file_storage_takes_a_storages_key_or_a_dotted_path(
    settings: Any, tmp_path: Path, runner: Any
) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "actions": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "by-key")},
        },
    }
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "FILE_STORAGE": "actions"}):
        action = wait_finished(action_id(Client().post("/t/export/", {"file:a.txt": "A"})))
        assert (tmp_path / f"by-key/async_actions/{action.pk}/output/a.txt").read_text() == "A"
    settings.MEDIA_ROOT = str(tmp_path / "by-path")
    path = "django.core.files.storage.FileSystemStorage"
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "FILE_STORAGE": path}):
        action = wait_finished(action_id(Client().post("/t/export/", {"file:b.txt": "B"})))
        assert (tmp_path / f"by-path/async_actions/{action.pk}/output/b.txt").read_text() == "B"


# -- result files ---------------------------------------------------------------------------


def export(client: Client, **named: str) -> Action:
    response = client.post("/t/export/", {f"file:{k}": v for k, v in named.items()})
    action = wait_finished(action_id(response))
    assert action.status == "succeeded", action.traceback
    return action


def test_attached_files_are_listed_and_served_only_to_who_may_see_the_action(
    media: Path, runner: Any
) -> None:
    owner, other = logged_in(user("alice")), logged_in(user("bob"))
    viewer = logged_in(user("viewer", "view_action"))
    action = export(owner, **{"report.csv": "a,b\n", "notes.txt": "hello"})
    assert action.response == {"attached": ["notes.txt", "report.csv"]}
    rows = list(action.files.all())
    assert [(r.name, r.kind, r.content_type, r.size) for r in rows] == [
        ("notes.txt", "output", "text/plain", 5),
        ("report.csv", "output", "text/csv", 4),
    ]
    page = owner.get(reverse("export_view:result", kwargs={"pk": action.pk})).content.decode()
    urls = [reverse("export_view:file", kwargs={"pk": action.pk, "file_id": r.pk}) for r in rows]
    for row, url in zip(rows, urls, strict=True):
        assert f'href="{url}" download>{row.name}</a>' in page

    got = owner.get(urls[1])
    assert got.status_code == 200
    assert b"".join(got.streaming_content) == b"a,b\n"
    assert got["Content-Type"] == "text/csv"
    assert got["Content-Disposition"] == 'attachment; filename="report.csv"'
    assert got["X-Content-Type-Options"] == "nosniff"
    assert viewer.get(urls[0]).status_code == 200
    for stranger in (other, Client()):
        assert stranger.get(urls[0]).status_code == 404
    # Another action's file id under this action's URL is no file of it.
    theirs = export(other, **{"x.txt": "x"}).files.get()
    wrong = reverse("export_view:file", kwargs={"pk": action.pk, "file_id": theirs.pk})
    assert owner.get(wrong).status_code == 404


def test_the_api_lists_files_with_download_urls_for_the_owner_only(
    media: Path, runner: Any
) -> None:
    owner, other = logged_in(user("alice")), logged_in(user("bob"))
    action = export(owner, **{"data.json": '{"a": 1}'})
    body = owner.get(f"/api/actions/{action.pk}/").json()
    row = action.files.get()
    url = f"http://testserver/api/actions/{action.pk}/files/{row.pk}/"
    assert body["files"] == [
        {
            "id": row.pk,
            "name": "data.json",
            "kind": "output",
            "size": 8,
            "content_type": "application/json",
            "created_at": body["files"][0]["created_at"],
            "url": url,
        }
    ]
    listed = owner.get("/api/actions/").json()["results"]
    assert listed[0]["files"][0]["url"] == url
    got = owner.get(url, HTTP_ACCEPT="application/octet-stream")
    assert got.status_code == 200 and b"".join(got.streaming_content) == b'{"a": 1}'
    assert got["Content-Disposition"] == 'attachment; filename="data.json"'
    assert other.get(url).status_code == 404
    assert Client().get(url).status_code in (401, 403)
    assert owner.get(f"/api/actions/{action.pk}/files/999999/").status_code == 404


def test_a_file_gone_from_storage_answers_404_not_500(media: Path, runner: Any) -> None:
    owner = logged_in(user("alice"))
    action = export(owner, **{"gone.txt": "x"})
    row = action.files.get()
    (media / row.path).unlink()
    url = reverse("export_view:file", kwargs={"pk": action.pk, "file_id": row.pk})
    response = owner.get(url)
    assert response.status_code == 404
    api = owner.get(f"/api/actions/{action.pk}/files/{row.pk}/")
    assert api.status_code == 404 and "no longer in storage" in api.json()["detail"]


def test_a_returned_file_is_kept_as_the_result_file(media: Path, runner: Any) -> None:
    response = Client().post("/t/export/", {"return_file": "the report"})
    action = wait_finished(action_id(response))
    assert action.status == "succeeded", action.traceback
    assert action.response == {"file": "returned.txt"}
    assert (media / action.files.get().path).read_text() == "the report"


def test_attaching_past_the_limits_fails_the_action_with_the_setting_named(
    media: Path, runner: Any
) -> None:
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "MAX_FILES_PER_ACTION": 1}):
        action = wait_finished(
            action_id(Client().post("/t/export/", {"file:a.txt": "a", "file:b.txt": "b"}))
        )
    assert action.status == "failed"
    assert "MAX_FILES_PER_ACTION" in action.error
    assert stored(media) == [f"async_actions/{action.pk}/output/a.txt"]
    with override_settings(ASYNC_ACTIONS={**settings.ASYNC_ACTIONS, "MAX_FILE_BYTES": 2}):
        action = wait_finished(action_id(Client().post("/t/export/", {"file:big.txt": "abc"})))
    assert action.status == "failed" and "MAX_FILE_BYTES" in action.error


HOSTILE_NAMES = [
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/abs/path.txt",
    "a\x00b.txt",
    "x" * 5000 + ".csv",
    "",
    ".",
    "..",
    ".htaccess",
    '"; filename="evil.html',
    "\u202egnp.exe",  # right-to-left override: shows as "exe.png"
    "line\nbreak.txt",
    "отчёт 2024.csv",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_name_stays_inside_the_actions_folder_and_the_header(
    media: Path, name: str
) -> None:
    action = Action.objects.create(handler=ExportView.handler_name(), status="succeeded")
    kept = files.add_file(action.pk, name, b"data")
    folder = media / f"async_actions/{action.pk}/output"
    assert (folder / kept.name).read_bytes() == b"data"
    assert kept.path == f"async_actions/{action.pk}/output/{kept.name}"
    assert stored(media) == [kept.path]
    assert 0 < len(kept.name) <= files.MAX_NAME_LENGTH
    assert not set(kept.name) & {"/", "\\", "\x00", "\n", '"', "\u202e"}
    assert not kept.name.startswith(".")
    from async_actions.http import file_response

    header = file_response(kept.row)["Content-Disposition"]
    assert "\n" not in header and header.startswith("attachment; filename")


def test_clean_names_keep_what_is_safe() -> None:
    assert files.clean_name("../../etc/passwd") == "passwd"
    assert files.clean_name("C:\\Users\\me\\report 1.csv") == "report_1.csv"
    assert files.clean_name("отчёт 2024.csv") == "отчёт_2024.csv"
    assert files.clean_name("..") == "file"
    long = files.clean_name("y" * 300 + ".tar")
    assert len(long) == files.MAX_NAME_LENGTH and long.endswith(".tar")


def test_two_files_with_one_name_are_both_kept(media: Path) -> None:
    action = Action.objects.create(handler="x", status="succeeded")
    first = files.add_file(action.pk, "same.txt", b"1")
    second = files.add_file(action.pk, "same.txt", b"2")
    assert first.path != second.path
    assert (media / first.path).read_bytes() == b"1" and (media / second.path).read_bytes() == b"2"


def test_deleting_a_user_removes_the_files_of_their_actions(media: Path, runner: Any) -> None:
    alice = user("alice")
    export(logged_in(alice), **{"a.txt": "A"})
    wait_finished(action_id(upload(logged_in(alice))))
    assert len(stored(media)) == 2
    alice.delete()
    assert stored(media) == [] and not ActionFile.objects.exists()


# -- admin ----------------------------------------------------------------------------------


def test_the_admin_lists_file_links_for_staff_and_its_delete_removes_the_files(
    media: Path, runner: Any
) -> None:
    owner = logged_in(user("alice"))
    action = export(owner, **{"a.txt": "A"})
    upload_action = wait_finished(action_id(upload(owner)))
    staff = logged_in(user("admin", is_staff=True, is_superuser=True))
    row = action.files.get()
    link = reverse("admin:async_actions_action_file", args=[action.pk, row.pk])
    page = staff.get(reverse("admin:async_actions_action_change", args=[action.pk]))
    assert f'<a href="{link}" download>a.txt</a>' in page.content.decode()
    got = staff.get(link)
    assert got.status_code == 200 and b"".join(got.streaming_content) == b"A"
    noperm = logged_in(user("noperm", is_staff=True))
    assert noperm.get(link).status_code == 404
    assert owner.get(link).status_code == 302  # the admin's login, not the file

    response = staff.post(
        reverse("admin:async_actions_action_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [str(action.pk), str(upload_action.pk)],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    assert not Action.objects.filter(pk__in=[action.pk, upload_action.pk]).exists()
    assert stored(media) == []


def test_uploads_past_the_owners_stored_bytes_are_refused_before_anything_is_stored(
    media: Path, django_user_model: Any
) -> None:
    """Finished actions keep their uploads, and the start limits count unfinished
    actions only: the quota counts what the owner keeps, finished or not. An anonymous
    visitor counts by address, so a new session per post does not reset it."""
    quota = {**settings.ASYNC_ACTIONS, "MAX_UPLOAD_BYTES_PER_OWNER": 20}
    with override_settings(ASYNC_ACTIONS=quota):
        first = upload(Client(), content=b"0123456789")  # 10 bytes kept
        assert first.status_code == 303
        service.complete(action_id(first))  # finished: its upload stays
        second = upload(Client(), content=b"0123456789")  # another session, same address
        assert second.status_code == 303
        refused = upload(Client(), content=b"x")
        assert refused.status_code == 413
        assert "MAX_UPLOAD_BYTES_PER_OWNER" in refused.content.decode()
        assert Action.objects.count() == 2 and len(stored(media)) == 2
        other = upload(Client(REMOTE_ADDR="10.9.9.9"), content=b"0123456789")
        assert other.status_code == 303  # another address has its own share
        alice = django_user_model.objects.create_user("alice", password="pw")
        client = Client()
        client.force_login(alice)
        assert upload(client, content=b"0123456789" * 2).status_code == 303
        assert upload(client, content=b"y").status_code == 413
    assert len(stored(media)) == 4


def test_without_a_quota_uploads_are_not_counted(media: Path) -> None:
    unlimited = {**settings.ASYNC_ACTIONS, "MAX_UPLOAD_BYTES_PER_OWNER": None}
    with override_settings(ASYNC_ACTIONS=unlimited):
        for _ in range(3):
            assert upload(Client(), content=b"0123456789" * 5).status_code == 303
    assert len(stored(media)) == 3
