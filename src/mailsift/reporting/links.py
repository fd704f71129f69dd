"""Signed, expiring one-click links: release a quarantined message, whitelist a sender.

The daily digest (:mod:`mailsift.reporting.digest`) gives each entry a **release** and
a **whitelist sender** link that work without logging in.  A link carries its
own authority: an itsdangerous ``URLSafeTimedSerializer`` token, signed with
the web secret (:func:`secret`: a file, or the shared database's; shared with ``webq``), holding

* the action (also part of the signing salt, so a release token is not a
  valid whitelist token and the reverse),
* the quarantine id (empty for a rejected message: those have no release link),
* the recipient the action is for (release to that address only; whitelist
  for that address only),
* the sender to whitelist, and the expiry time (``link_lifetime``; a hard cap
  of :data:`MAX_LIFETIME` is also checked on the token's own timestamp).

Following a link changes nothing: ``GET`` shows a confirmation page whose
button ``POST``s (mail scanners that prefetch links never release mail).  The
actions are idempotent: a release is claimed in the ``link_action`` table
(one row per quarantine id, recipient and action) before the message is sent,
so a second click, a reload or two clicks at once send it once.  A whitelist
link's row is keyed by the sender instead of the message
(:func:`whitelist_key`): links add a sender to a recipient's whitelist once,
ever, so an entry an admin removed is never re-created by a link (for this
message or another one from the same sender).

Who may use a link is checked where it is followed
(:mod:`mailsift.web.links_pages`): a release link only for a category users may
release (:func:`mailsift.storage.quarantine.admin.may_release`, not ``virus``
by default; the digest offers no such link either), and a whitelist link only
for a mailbox (:func:`mailsift.storage.policies.mailbox_owner`) while its
message is still in the quarantine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from mailsift.errors import RequestRefused
from mailsift.storage import secrets as stored_secrets
from mailsift.storage import sql
from mailsift.storage.schema import link_action_table

if TYPE_CHECKING:
    from mailsift.storage.db import Database

RELEASE = "release"
WHITELIST = "whitelist"
ACTIONS = (RELEASE, WHITELIST)

SECRET_FILENAME = "webq.secret"  # noqa: S105 - a file name, not a secret
"""The web secret under ``STATE_DIR`` (``webq(secret_file=...)`` names another one)."""
DEFAULT_LIFETIME = 7 * 86400.0
MAX_LIFETIME = 90 * 86400
"""No link is honoured longer than this after it was signed, whatever its expiry says."""
STALE_CLAIM = 600.0
"""A release claimed this long ago and never finished (a crashed worker) may be taken over."""
LINK_PREFIX = "/link"

SENDING = "sending"
DONE = "done"


class LinkError(RequestRefused):
    """A link that cannot be used; ``reason`` is ``invalid`` or ``expired``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LinkClaim:
    """What a verified link allows: ``action`` on ``entry_id`` for ``recipient``."""

    action: str
    entry_id: str
    recipient: str
    sender: str
    expires: float


# --------------------------------------------------------------------------- the secret


SHARED_SECRET = "webq"  # noqa: S105 - its name, not a secret
"""The web secret's name in the database (:mod:`mailsift.storage.secrets`)."""


def shared_database(database: Database | None, state_dir: str) -> bool:
    """Whether ``database`` may be shared with other nodes: PostgreSQL, or a SQLite file outside ``STATE_DIR``
    (several configs on one machine); the default ``db.sqlite()`` in ``STATE_DIR`` is this node's own."""
    if database is None:
        return False
    if database.dialect != "sqlite":
        return True
    path = os.path.realpath(str(database.url.database or ""))
    return os.path.commonpath([path, os.path.realpath(state_dir)]) != os.path.realpath(state_dir)


def secret(state_dir: str, secret_file: str | None = None, database: Database | None = None) -> bytes:
    """The web secret (web sessions and signed links), where every node of a cluster reads the same one.

    * ``secret_file`` (``webq(secret_file=...)``): that file, given by the config (the same file on
      every node, e.g. from configuration management); made once if missing, as below;
    * else, with a ``database`` shared by several nodes (:func:`shared_database`): the database's
      ``webq`` secret, made once by the first node (insert if absent, so nodes starting together
      agree); its first value is this node's ``STATE_DIR/webq.secret`` when there is one, so that
      sessions and links made before the upgrade keep working;
    * else (one node): ``STATE_DIR/webq.secret``.

    A file secret is created with mode 0600, written and fsynced under a temporary name and
    linked into place, so that processes starting together agree on one secret (the loser of
    the race reads the winner's).  DatabaseError if the database fails.
    """
    if secret_file is None and database is not None and shared_database(database, state_dir):
        path = os.path.join(state_dir, SECRET_FILENAME)
        try:
            proposed = _read_secret(path)
        except FileNotFoundError:
            proposed = secrets.token_urlsafe(48).encode()
        value = database.call(stored_secrets.shared, SHARED_SECRET, proposed.decode(), time.time()).encode()
        if len(value) < 32:
            raise ValueError(f"database {database.describe()}: the {SHARED_SECRET} secret is too short")
        return value
    path = secret_file or os.path.join(state_dir, SECRET_FILENAME)
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_urlsafe(48).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return _read_secret(path)


def _read_secret(path: str) -> bytes:
    with open(path, "rb") as handle:
        value = handle.read().strip()
    if len(value) < 32:
        raise ValueError(f"{path}: the secret is too short (at least 32 characters)")
    return value


# --------------------------------------------------------------------------- signing


class LinkSigner:
    """Signs and verifies link tokens with one secret."""

    def __init__(self, key: bytes | str) -> None:
        from itsdangerous import URLSafeTimedSerializer  # web code: not loaded by a worker until links are signed

        self._serializers = {action: URLSafeTimedSerializer(key, salt=f"mailsift.link.{action}") for action in ACTIONS}

    def sign(
        self,
        action: str,
        entry_id: str,
        recipient: str,
        *,
        sender: str = "",
        lifetime: float = DEFAULT_LIFETIME,
        now: float | None = None,
    ) -> str:
        """A token allowing ``action`` on ``entry_id`` for ``recipient`` until ``now + lifetime``."""
        if action not in ACTIONS:
            raise ValueError(f"unknown link action {action!r}")
        expires = (time.time() if now is None else now) + min(float(lifetime), MAX_LIFETIME)
        payload = {"a": action, "q": entry_id, "r": recipient, "s": sender, "e": int(expires)}
        token: str = self._serializers[action].dumps(payload)
        return token

    def verify(self, token: str, action: str, *, now: float | None = None) -> LinkClaim:
        """The claim of a valid, unexpired ``action`` token; :class:`LinkError` otherwise."""
        from itsdangerous import BadData, SignatureExpired

        serializer = self._serializers.get(action)
        if serializer is None or len(token) > 2000:
            raise LinkError("invalid", "This link is not valid.")
        try:
            payload: Any = serializer.loads(token, max_age=MAX_LIFETIME)
        except SignatureExpired:
            raise LinkError("expired", "This link has expired.") from None
        except BadData:
            raise LinkError("invalid", "This link is not valid.") from None
        fields = ("a", "q", "r", "s")
        if (
            not isinstance(payload, dict)
            or not all(isinstance(payload.get(name), str) for name in fields)
            or not isinstance(payload.get("e"), int)
            or payload["a"] != action
            or not payload["r"]
        ):
            raise LinkError("invalid", "This link is not valid.")
        if payload["e"] <= (time.time() if now is None else now):
            raise LinkError("expired", "This link has expired.")
        return LinkClaim(payload["a"], payload["q"], payload["r"], payload["s"], float(payload["e"]))


def link_url(base_url: str, action: str, token: str) -> str:
    """The address of a link under the web quarantine's base URL."""
    return f"{base_url.rstrip('/')}{LINK_PREFIX}/{action}/{token}"


# --------------------------------------------------------------------------- idempotence


@dataclass(frozen=True)
class ActionState:
    """A row of ``link_action``: ``sending`` or ``done``, since when."""

    state: str
    claimed: float
    done_at: float | None


def whitelist_key(sender: str) -> str:
    """The ``quarantine_id`` of a whitelist link's row: the sender (``<eve@spam.example>``), never a message id."""
    return f"<{sender.lower()}>"


def _key(entry_id: str, recipient: str, action: str) -> Any:
    c = link_action_table.c
    return (c.quarantine_id == entry_id) & (c.recipient == recipient.lower()) & (c.action == action)


def action_state(connection: Connection, entry_id: str, recipient: str, action: str) -> ActionState | None:
    """The recorded state of an action, or None if it was never taken."""
    c = link_action_table.c
    row = connection.execute(select(c.state, c.claimed, c.done_at).where(_key(entry_id, recipient, action))).first()
    return None if row is None else ActionState(row.state, row.claimed, row.done_at)


def claim(connection: Connection, entry_id: str, recipient: str, action: str, now: float) -> ActionState | None:
    """Take the action for this caller; None if taken, else the state that stands in the way.

    One atomic insert decides between concurrent clicks; a claim left
    ``sending`` for :data:`STALE_CLAIM` seconds (a crash) is taken over.
    """
    row = {
        "quarantine_id": entry_id,
        "recipient": recipient.lower(),
        "action": action,
        "state": SENDING,
        "claimed": now,
    }
    if sql.claim(connection, link_action_table, row):
        return None
    current = action_state(connection, entry_id, recipient, action)
    if current is None:  # removed in between: a failed attempt; try again later
        return ActionState(SENDING, now, None)
    if current.state == SENDING and current.claimed < now - STALE_CLAIM:
        taken = connection.execute(
            update(link_action_table)
            .where(_key(entry_id, recipient, action), link_action_table.c.claimed == current.claimed)
            .values(claimed=now)
        ).rowcount
        if taken:
            return None
    return current


def finish(connection: Connection, entry_id: str, recipient: str, action: str, now: float) -> None:
    """Record that a claimed action was carried out."""
    connection.execute(
        update(link_action_table).where(_key(entry_id, recipient, action)).values(state=DONE, done_at=now)
    )


def prune(connection: Connection, now: float, limit: int) -> int:
    """Forget at most ``limit`` release rows claimed more than :data:`MAX_LIFETIME` ago; returns how many.

    The token of such a click was signed before it, so :meth:`LinkSigner.verify` refuses it as
    expired whatever the row says (and the entry's own ``released_to`` still answers "released
    already").  Whitelist rows are kept: they are what stops links from adding a sender an admin
    removed (:func:`whitelist_key`), one per sender a user whitelisted, as many as the lists' entries.
    """
    c = link_action_table.c
    return sql.delete_batch(
        connection, link_action_table, (c.action == RELEASE) & (c.claimed < now - MAX_LIFETIME), limit
    )


def unclaim(connection: Connection, entry_id: str, recipient: str, action: str) -> None:
    """Give a claim back after a failure (the next click tries again)."""
    connection.execute(
        delete(link_action_table).where(_key(entry_id, recipient, action), link_action_table.c.state == SENDING)
    )


__all__ = [
    "ACTIONS",
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "RELEASE",
    "WHITELIST",
    "ActionState",
    "LinkClaim",
    "LinkError",
    "LinkSigner",
    "action_state",
    "claim",
    "finish",
    "link_url",
    "prune",
    "secret",
    "unclaim",
    "whitelist_key",
]
