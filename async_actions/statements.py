"""What the hand-written statements of the hot paths share.

A start, a claim and a finish run on every action; the ORM compiled their statements
anew each time, which was most of their own cost. They are written once here and in
:mod:`async_actions.lifecycle`, and sent together where the driver allows it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from django.db import connections, router

from async_actions.models import Action

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper


def writer() -> BaseDatabaseWrapper:
    """The connection the actions are written on: the router's ``db_for_write``, which
    need not be ``default``. Every statement of a transition, its transaction, its locks
    and its after-commit steps run there, or a refusal cannot roll its INSERT back and a
    lock guards nothing."""
    return connections[router.db_for_write(Action)]


def batches(conn: BaseDatabaseWrapper) -> bool:
    """Whether one execute may carry several statements and answer each in turn.

    Only psycopg 3 binding parameters on the client (Django's default for it) sends one
    string as one message; its server-side binding (``OPTIONS["server_side_binding"]``),
    psycopg 2 and SQLite take one statement per execute. Outside a transaction the
    server runs such a string as one implicit transaction.
    """
    options = conn.settings_dict.get("OPTIONS") or {}
    return (
        conn.vendor == "postgresql"
        and conn.Database.__name__ == "psycopg"  # type: ignore[attr-defined]
        and not options.get("server_side_binding")
    )


@functools.cache
def insert_sql(alias: str) -> str:
    """The action's INSERT on the database ``alias``: every local concrete field, in
    ``Action._meta.local_concrete_fields`` order, as placeholders."""
    conn = connections[alias]
    fields = Action._meta.local_concrete_fields
    table = conn.ops.quote_name(Action._meta.db_table)
    columns = ", ".join(conn.ops.quote_name(field.column) for field in fields)
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
