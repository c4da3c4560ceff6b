"""Files an action keeps: the uploads it was started with and the files it produced.

Every file goes through one storage (``FILE_STORAGE``: a key of Django's ``STORAGES``
or a storage class's dotted path) under ``async_actions/<action id>/<kind>/``, with an
:class:`~async_actions.models.ActionFile` row beside it. The storage is what a worker on
another machine reads, so it must be shared in the scaled shape (docs/deploy.md).

The stored file follows its row: deleting an action (the purge command, the admin, a
cascade from its user) deletes its rows, and each deleted row's file is removed from
storage once the transaction commits.

A handler sees a file as a :class:`StoredFile`: ``name``, ``size``, ``content_type`` and
``open()``, which reads through the storage and turns a missing file into an
:class:`~async_actions.exceptions.ActionError` the user can read.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import unicodedata
from collections.abc import Iterable
from functools import partial
from typing import IO, TYPE_CHECKING, Any
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured, SuspiciousFileOperation
from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, InvalidStorageError, Storage, storages
from django.db import router, transaction
from django.db.models import Sum
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils.module_loading import import_string
from django.utils.text import get_valid_filename
from django.utils.translation import gettext

from async_actions.conf import action_settings
from async_actions.exceptions import FileLimitError, FileMissing
from async_actions.models import Action, ActionFile
from async_actions.signals import action_finished

if TYPE_CHECKING:
    from async_actions.fairness import Owner

__all__ = [
    "MARKER",
    "FileLimitError",
    "FileMissing",
    "StoredFile",
    "add_file",
    "clean_name",
    "folder",
    "get_storage",
    "record_uploads",
    "resolve_inputs",
    "store_upload",
]

logger = logging.getLogger("async_actions")

#: The key of the JSON object that stands for an uploaded file in an action's request:
#: ``{"$file": "<path in storage>"}``. ``run()`` gets a :class:`StoredFile` in its place.
MARKER = "$file"
#: Longest file name kept (extension included); longer names are cut before the extension.
MAX_NAME_LENGTH = 100
#: What a name becomes when nothing of it is left after cleaning.
FALLBACK_NAME = "file"
#: How far back :func:`resolve_inputs` follows ``retry_of`` for a retry's uploads.
MAX_RETRY_DEPTH = 20
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$", re.ASCII)

_class_storages: dict[str, Storage] = {}


def get_storage() -> Storage:
    """The storage ``FILE_STORAGE`` names; ImproperlyConfigured when it names none."""
    name = action_settings.FILE_STORAGE
    if "." not in name:
        try:
            return storages[name]
        except InvalidStorageError:
            raise ImproperlyConfigured(
                f"ASYNC_ACTIONS['FILE_STORAGE'] is {name!r}, which is not a key of STORAGES."
            ) from None
    if name not in _class_storages:
        try:
            storage_class = import_string(name)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"ASYNC_ACTIONS['FILE_STORAGE'] {name!r} cannot be imported: {exc}"
            ) from None
        storage = storage_class()
        if not isinstance(storage, Storage):
            raise ImproperlyConfigured(
                f"ASYNC_ACTIONS['FILE_STORAGE'] {name!r} is not a Storage class."
            )
        _class_storages[name] = storage
    return _class_storages[name]


def clean_name(name: object) -> str:
    """A file name safe to store and to send back: no folders, no control characters.

    The last path segment (either slash), NFC-normalised, without control, format or
    unassigned characters, through Django's ``get_valid_filename`` (letters, digits,
    ``-_.``; spaces become ``_``), without leading dots, at most ``MAX_NAME_LENGTH``
    characters with its extension kept; ``"file"`` when nothing is left.
    """
    text = str(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    try:
        text = get_valid_filename(text).lstrip(".")
    except SuspiciousFileOperation:  # nothing usable, "." or ".."
        text = ""
    if len(text) > MAX_NAME_LENGTH:
        stem, dot, extension = text.rpartition(".")
        extension = extension[:16] if dot and stem else ""
        keep = MAX_NAME_LENGTH - len(extension) - (1 if extension else 0)
        text = (stem if extension else text)[:keep] + (f".{extension}" if extension else "")
    return text or FALLBACK_NAME


def folder(action_id: UUID | str, kind: str) -> str:
    """The storage folder of an action's files of one kind."""
    return f"async_actions/{action_id}/{kind}"


def content_type_for(name: str, given: str | None = None) -> str:
    """``given`` when it looks like a media type, else a guess from the name."""
    if given and _CONTENT_TYPE.match(given) and len(given) <= 127:
        return given.lower()
    guessed, _encoding = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def as_file(content: Any) -> File[Any]:
    """bytes, text (as UTF-8), a Django ``File`` or a readable file object, as a File."""
    if isinstance(content, File):
        return content
    if isinstance(content, str):
        return ContentFile(content.encode("utf-8"))
    if isinstance(content, bytes | bytearray | memoryview):
        return ContentFile(bytes(content))
    if hasattr(content, "read"):
        return File(content)
    raise TypeError(
        f"A file's content must be bytes, text, a File or a file object, not "
        f"{type(content).__name__}."
    )


def check_limits(
    action_id: UUID | str, sizes: Iterable[int], *, already: int | None = None
) -> None:
    """Raise FileLimitError when ``sizes`` break ``MAX_FILE_BYTES`` or, with the files the
    action has (``already``, counted when None), ``MAX_FILES_PER_ACTION``."""
    sizes = list(sizes)
    biggest = action_settings.MAX_FILE_BYTES
    for size in sizes:
        if biggest is not None and size > biggest:
            raise FileLimitError(
                f"A file of {size} bytes is over the limit of {biggest} bytes "
                "(ASYNC_ACTIONS['MAX_FILE_BYTES'])."
            )
    have = (
        ActionFile.objects.primary().filter(action_id=action_id).count()
        if already is None
        else already
    )
    most = action_settings.MAX_FILES_PER_ACTION
    if have + len(sizes) > most:
        raise FileLimitError(
            f"An action may keep at most {most} files (ASYNC_ACTIONS['MAX_FILES_PER_ACTION'])."
        )


def check_owner_quota(owner: Owner | None, incoming: int) -> None:
    """Raise FileLimitError when ``incoming`` bytes of uploads would take the owner over
    ``MAX_UPLOAD_BYTES_PER_OWNER``, counting the uploads kept for all their actions.

    The start limits count unfinished actions only, and uploads stay after the finish
    (until ``RETENTION`` purges the action, or ``DELETE_UPLOADS_AT_FINISH``): without
    this, one visitor posting quick actions one after another fills the disk. An
    anonymous visitor counts by address, as the limits do (:func:`fairness.owner_of`).
    """
    most = action_settings.MAX_UPLOAD_BYTES_PER_OWNER
    if most is None or owner is None or incoming <= 0:
        return
    owned = Action.objects.primary().filter(owner.actions()).values("pk")
    kept = (
        ActionFile.objects.primary()
        .filter(kind=ActionFile.Kind.INPUT, action__in=owned)
        .aggregate(total=Sum("size"))["total"]
        or 0
    )
    if kept + incoming > most:
        raise FileLimitError(
            f"Your uploads would keep {kept + incoming} bytes stored, over the limit of "
            f"{most} bytes (ASYNC_ACTIONS['MAX_UPLOAD_BYTES_PER_OWNER']). Files of "
            "finished actions are removed when they expire."
        )


def store(action_id: UUID | str, kind: str, name: object, content: Any) -> tuple[str, str, int]:
    """Save ``content`` under the action's folder; ``(path, clean name, size)``.

    The storage's ``get_available_name`` picks a free name, so two files called alike
    never overwrite each other.
    """
    file = as_file(content)
    clean = clean_name(name)
    max_length = ActionFile._meta.get_field("path").max_length
    path = get_storage().save(f"{folder(action_id, kind)}/{clean}", file, max_length=max_length)
    return path, clean, int(file.size or 0)


def add_file(
    action_id: UUID | str,
    name: object,
    content: Any,
    *,
    kind: str = ActionFile.Kind.OUTPUT,
    content_type: str | None = None,
) -> StoredFile:
    """Store ``content`` for the action and record it; the stored file (``attach_file``).

    Raises FileLimitError when the file is too large or the action has its maximum of
    files already; nothing is stored then.
    """
    file = as_file(content)
    check_limits(action_id, [int(file.size or 0)])
    path, clean, size = store(action_id, kind, name, file)
    row = ActionFile.objects.create(
        action_id=action_id,
        kind=kind,
        name=clean,
        path=path,
        size=size,
        content_type=content_type_for(clean, content_type),
    )
    return StoredFile(row)


def store_upload(action_id: UUID, upload: File[Any], kept: int) -> ActionFile:
    """Store a form's upload for an action about to start; its row, not saved yet.

    ``kept`` is how many uploads this start stored already (for the count limit). The
    row is saved with the action (:func:`record_uploads`), so a worker that claims the
    action finds it.
    """
    check_limits(action_id, [int(upload.size or 0)], already=kept)
    path, clean, size = store(action_id, ActionFile.Kind.INPUT, upload.name, upload)
    # The browser's content type is the visitor's claim; the name's is as good and ours.
    return ActionFile(
        action_id=action_id,
        kind=ActionFile.Kind.INPUT,
        name=clean,
        path=path,
        size=size,
        content_type=content_type_for(clean),
    )


def record_uploads(rows: list[ActionFile]) -> None:
    """Save the rows of :func:`store_upload` (in the transaction that created the action)."""
    ActionFile.objects.bulk_create(rows)


def remove_stored(paths: Iterable[str]) -> None:
    """Delete these names from storage; a failure is logged, never raised."""
    storage = get_storage()
    for path in paths:
        try:
            storage.delete(path)
        except Exception:  # a storage outage must not fail a purge or a delete
            logger.exception("Could not delete %s from storage", path)
        else:
            _remove_empty_folders(storage, path)


def _remove_empty_folders(storage: Storage, path: str) -> None:
    """On a local folder, the action's emptied ``<kind>/`` and ``<id>/`` folders go too
    (object stores have no folders to leave behind)."""
    if not isinstance(storage, FileSystemStorage):
        return
    parts = path.split("/")
    if len(parts) < 4 or parts[0] != "async_actions":
        return
    for depth in (3, 2):  # async_actions/<id>/<kind>, then async_actions/<id>
        try:
            os.rmdir(storage.path("/".join(parts[:depth])))
        except OSError:  # not empty (another file), already gone: leave it
            return


class StoredFile:
    """An action's file as a handler sees it: ``name``, ``size``, ``content_type``,
    ``path`` (the name in storage) and ``open()`` / ``read()`` through the storage."""

    def __init__(self, row: ActionFile) -> None:
        self.row = row
        self.name: str = row.name
        self.path: str = row.path
        self.size: int = row.size
        self.content_type: str = row.content_type
        self.kind: str = row.kind

    def open(self, mode: str = "rb") -> File[Any]:
        """The file, open for reading from storage; FileMissing (an ActionError, so the
        user reads why) when the storage no longer has it."""
        try:
            return get_storage().open(self.path, mode)
        except FileNotFoundError:
            raise FileMissing(
                gettext(
                    "The uploaded file “%(name)s” is no longer in storage: it was removed, "
                    "or this worker cannot reach the storage it was saved to."
                )
                % {"name": self.name}
                if self.kind == ActionFile.Kind.INPUT
                else gettext("The file “%(name)s” is no longer in storage.") % {"name": self.name}
            ) from None

    def read(self) -> bytes:
        """The whole content (for small files; stream large ones with ``open()``)."""
        with self.open() as handle:
            data = handle.read()
        return data if isinstance(data, bytes) else str(data).encode("utf-8")

    def __repr__(self) -> str:
        return f"<StoredFile {self.name!r} ({self.size} bytes)>"


def _markers(value: Any, found: set[str]) -> None:
    """Collect the paths of the file markers in a request (a JSON value)."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(MARKER), str):
            found.add(value[MARKER])
            return
        for item in value.values():
            _markers(item, found)
    elif isinstance(value, list):
        for item in value:
            _markers(item, found)


def _replaced(value: Any, files: dict[str, StoredFile]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and value.get(MARKER) in files:
            return files[value[MARKER]]
        return {key: _replaced(item, files) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item, files) for item in value]
    return value


def resolve_inputs(action_id: UUID | str, request: Any) -> Any:
    """``request`` with each upload's marker replaced by its :class:`StoredFile`.

    Only markers naming an upload of this action (or of the action it retries) are
    replaced, so a marker typed into a form's JSON field cannot read another action's
    file: it stays a plain dict.
    """
    wanted: set[str] = set()
    _markers(request, wanted)
    if not wanted:
        return request
    owners: list[Any] = []
    current: Any = action_id
    while current is not None and len(owners) < MAX_RETRY_DEPTH:
        owners.append(current)
        current = (
            Action.objects.primary()
            .filter(pk=current)
            .values_list("retry_of_id", flat=True)
            .first()
        )
    rows = ActionFile.objects.primary().filter(
        action_id__in=owners, kind=ActionFile.Kind.INPUT, path__in=wanted
    )
    return _replaced(request, {row.path: StoredFile(row) for row in rows})


def open_for_download(row: ActionFile) -> IO[bytes] | None:
    """The stored file open for streaming, or None when storage no longer has it."""
    try:
        return get_storage().open(row.path, "rb")
    except FileNotFoundError:
        return None


@receiver(post_delete, sender=ActionFile, dispatch_uid="async_actions.files.removed")
def _removed(sender: Any, instance: ActionFile, **kwargs: Any) -> None:
    """A deleted row's file leaves storage once the deletion commits (not if it rolls back)."""
    using = kwargs.get("using") or router.db_for_write(ActionFile)
    transaction.on_commit(partial(remove_stored, [instance.path]), using=using, robust=True)


@receiver(action_finished, dispatch_uid="async_actions.files.finished")
def _finished(sender: Any, action: Action, **kwargs: Any) -> None:
    """With ``DELETE_UPLOADS_AT_FINISH``, an action's uploads go when it ends."""
    if not action_settings.DELETE_UPLOADS_AT_FINISH:
        return
    try:
        ActionFile.objects.primary().filter(
            action_id=action.pk, kind=ActionFile.Kind.INPUT
        ).delete()
    except Exception:  # the end is recorded; a leftover upload goes with the purge
        logger.exception("Could not delete the uploads of %s", action.pk)
