"""Transactions a handler opens and does not close.

A handler runs on the worker's own thread, with the connections the claim and the
finish use. One that enters ``transaction.atomic()`` without leaving it (``__enter__``
called by hand, a generator never resumed) or turns autocommit off leaves that
connection inside a transaction: the action's own end would be written into it and
never committed (the row stays ``running`` until the sweep fails it), and on SQLite the
write lock would stay held, stopping every other writer of the site.

The executor takes :func:`snapshot` before the handler and calls :func:`close_left_open`
after it: what the handler left open is rolled back (nothing it wrote there was ever
committed, so nothing is lost that was kept), and the action fails with a message that
names the bug. Transactions open before the handler (a caller that runs the action
inline inside its own ``atomic()``, a test case's) are not the handler's and stay.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, connections

logger = logging.getLogger("async_actions")

#: alias → (atomic blocks open, autocommit) before the handler ran.
Snapshot = dict[str, tuple[int, bool]]


class TransactionLeftOpen(Exception):
    """What a leaked ``atomic()`` block is closed with: its changes roll back."""


def snapshot() -> Snapshot:
    """The transaction state of this thread's open connections."""
    return {
        conn.alias: (len(conn.atomic_blocks), conn.get_autocommit())
        for conn in connections.all(initialized_only=True)
        if conn.connection is not None
    }


def close_left_open(before: Snapshot) -> list[str]:
    """Roll back what was opened since ``before`` and is still open; the aliases where
    something was (empty: nothing left open)."""
    left: list[str] = []
    for conn in connections.all(initialized_only=True):
        depth, autocommit = before.get(conn.alias, (0, conn.settings_dict["AUTOCOMMIT"]))
        extra = conn.atomic_blocks[depth:]
        if extra:
            left.append(conn.alias)
            error = TransactionLeftOpen(f"an atomic block left open on {conn.alias!r}")
            try:
                for block in reversed(extra):
                    block.__exit__(TransactionLeftOpen, error, None)
            except DatabaseError:
                logger.warning("Could not roll back on %r; closing it", conn.alias, exc_info=True)
                conn.close()
        elif (
            not conn.in_atomic_block
            and conn.connection is not None
            and conn.get_autocommit() != autocommit
        ):
            left.append(conn.alias)
            try:
                conn.rollback()
                conn.set_autocommit(autocommit)
            except DatabaseError:
                logger.warning("Could not roll back on %r; closing it", conn.alias, exc_info=True)
                conn.close()
    return left
