"""Who may see and who may control an action: one rule for every surface.

Pages, the status JSON, the API and the WebSocket all ask this module, with the visitor's
user and session (``request.user`` / ``request.session``, or ``scope["user"]`` /
``scope["session"]``), so the answer cannot differ between them:

- A visitor owns an action that is their user's or, when anonymous, their session's.
  A session counts only while the server holds it: a forged key, an expired one, one
  flushed by logout or one rotated by login owns nothing.
- ``async_actions.view_action`` (or ``change_action``, which the admin also takes to
  include viewing) sees every action; ``async_actions.change_action`` also controls
  (cancels, retries) every action. Owners always see and control their own. Superusers
  have every permission; ``is_staff`` alone grants nothing here.
- Tracebacks are shown to staff who may see every action.

On login, the anonymous actions of the session move to the user
(``CLAIM_SESSION_ACTIONS_ON_LOGIN``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, IntegrityError, router, transaction
from django.db.models import Q

from async_actions.conf import action_settings
from async_actions.fairness import Owner, owner_of
from async_actions.models import Action, ActionQuerySet

__all__ = [
    "claim_session_actions",
    "controllable_actions",
    "issued_session_key",
    "may_control_all",
    "may_see_all",
    "may_see_tracebacks",
    "new_owner",
    "owned_actions",
    "visible_action",
    "visible_actions",
]

logger = logging.getLogger("async_actions")

#: Either permission lets a user see every action (the admin reads them the same way).
VIEW_ALL_PERMISSIONS = ("async_actions.view_action", "async_actions.change_action")
#: Lets a user cancel or retry every action.
CONTROL_ALL_PERMISSION = "async_actions.change_action"
#: Session data: the keys this session started anonymous actions under, so that login,
#: which replaces the key before any signal runs, can still find them.
SESSION_KEYS = "_async_actions_keys"
#: How many past keys of one session are remembered (a site may cycle keys itself).
MAX_REMEMBERED_KEYS = 8


def _authenticated(user: Any) -> bool:
    return user is not None and bool(getattr(user, "is_authenticated", False))


def issued_session_key(session: Any) -> str | None:
    """The session's key if the server issued it and still holds it, else None.

    A key from the cookie is only a claim. Reading the data loads the session, and every
    session backend forgets a key it holds no record of (never issued, expired, deleted
    by logout or replaced by login), so the key left afterwards is one the server holds.
    """
    if session is None:
        return None
    session.keys()  # loads the session; drops a key the store does not hold
    return session.session_key or None


def owned_actions(user: Any, session: Any) -> ActionQuerySet:
    """The visitor's own actions: their user's, or (anonymous) their live session's."""
    if _authenticated(user):
        return Action.objects.owned_by(user)
    return Action.objects.owned_by(session_key=issued_session_key(session))


def may_see_all(user: Any) -> bool:
    """Whether the user may see every action, not only their own."""
    return _authenticated(user) and any(user.has_perm(p) for p in VIEW_ALL_PERMISSIONS)


def may_control_all(user: Any) -> bool:
    """Whether the user may cancel or retry every action, not only their own."""
    return _authenticated(user) and bool(user.has_perm(CONTROL_ALL_PERMISSION))


def may_see_tracebacks(user: Any) -> bool:
    """Tracebacks are for staff who may see every action; owners get the error message."""
    return _authenticated(user) and bool(user.is_staff) and may_see_all(user)


def visible_actions(user: Any, session: Any) -> ActionQuerySet:
    """Actions the visitor may see; anything else is answered as if it did not exist."""
    return Action.objects.primary().all() if may_see_all(user) else owned_actions(user, session)


def visible_action(
    user: Any, session: Any, pk: Any, *, defer: tuple[str, ...] = (), **filters: Any
) -> Action | None:
    """The action ``pk`` (matching ``filters``) if the visitor may see it, else None.

    The same rule as :func:`visible_actions`, decided in the other order: the row is read
    first, and the permission queries run only when it is not the visitor's own, so an
    owner polling their action costs one read instead of three.
    """
    queryset = Action.objects.filter(pk=pk, **filters)
    action = (queryset.defer(*defer) if defer else queryset).first()
    if action is None:
        return None
    if _is_owner(action, user, session) or may_see_all(user):
        return action
    return None


def _is_owner(action: Action, user: Any, session: Any) -> bool:
    """Whether ``action`` is among :func:`owned_actions` of the visitor (without a query)."""
    if _authenticated(user):
        return action.user_id is not None and action.user_id == user.pk
    if action.user_id is not None or not action.session_key:
        return False
    return action.session_key == issued_session_key(session)


def controllable_actions(user: Any, session: Any) -> ActionQuerySet:
    """Actions the visitor may cancel (a subset of those they may see)."""
    return Action.objects.all() if may_control_all(user) else owned_actions(user, session)


def new_owner(user: Any, session: Any) -> tuple[Any, str | None]:
    """``(user, session_key)`` for an action the visitor starts now.

    An anonymous visitor's session is created and saved first if the server holds none
    for them, so an action is only ever bound to an issued key; the key is remembered
    in the session for :func:`claim_session_actions`.
    """
    if _authenticated(user):
        return user, None
    if session is None:
        return None, None
    key = issued_session_key(session)
    if key is None:
        session.save()  # a new key, stored before anything is bound to it
        session.modified = True  # so SessionMiddleware sends the cookie
        key = session.session_key
    known = session.get(SESSION_KEYS)
    known = [k for k in known if isinstance(k, str)] if isinstance(known, list) else []
    if key not in known:
        session[SESSION_KEYS] = [*known, key][-MAX_REMEMBERED_KEYS:]
    return None, key


def visitor_owner(user: Any, session: Any, client_address: str = "") -> Owner | None:
    """Whom a visitor's connections count against (``MAX_SOCKETS_PER_*``): their user,
    else their address, else their issued session, the same
    :class:`~async_actions.fairness.Owner` keys the worker share uses. ``None``: the
    visitor owns nothing.

    An anonymous visitor counts by address when it is known: a client mints a new
    session by dropping its cookie, so a cap per session would bound nothing.

    Call it after the session was loaded (by :func:`visible_actions`): it reads the key
    left then and makes no query, so async code may call it.
    """
    if _authenticated(user):
        return owner_of(user.pk)
    session_key = getattr(session, "session_key", None) or ""
    if not session_key:
        return None  # owns no anonymous action: it can open no socket to count
    return owner_of(None, client_address=client_address, session_key=session_key)


def claim_session_actions(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """``user_logged_in`` receiver: the session's anonymous actions become the user's.

    Django gives the session a new key before the signal, so the keys come from the
    session's data, which login keeps (and which a forged cookie cannot carry).
    """
    session = getattr(request, "session", None)
    if session is None or not _authenticated(user):
        return
    keys = session.pop(SESSION_KEYS, None)
    if not action_settings.CLAIM_SESSION_ACTIONS_ON_LOGIN or not isinstance(keys, list):
        return
    keys = [k for k in keys if isinstance(k, str) and k]
    if not keys:
        return
    try:
        moved = _move(keys, user)
    except DatabaseError:
        logger.exception("Could not move the session's actions to %s on login", user)
        return
    if moved:
        logger.info("Moved %d anonymous action(s) to %s on login", moved, user)


def _move(keys: list[str], user: Any) -> int:
    candidates = Action.objects.primary().filter(user__isnull=True, session_key__in=keys)
    # An unfinished action with an idempotency key the user already uses stays behind:
    # one owner has one unfinished action per key.
    taken = list(
        Action.objects.primary()
        .filter(user=user)
        .active()
        .exclude(idempotency_key="")
        .values_list("idempotency_key", flat=True)
    )
    clash = Q(status__in=Action.ACTIVE_STATUSES, idempotency_key__in=taken)
    try:
        with transaction.atomic(using=router.db_for_write(Action)):
            return candidates.exclude(clash).update(user=user)
    except IntegrityError:  # a start raced us; move what can be moved, one by one
        moved = 0
        for pk in candidates.values_list("pk", flat=True):
            try:
                with transaction.atomic(using=router.db_for_write(Action)):
                    moved += (
                        Action.objects.primary().filter(pk=pk, user__isnull=True).update(user=user)
                    )
            except IntegrityError:
                continue
        return moved
