"""Web quarantine users in the database: accounts, their addresses, login throttling.

SAGATOR's ``webaccess`` table, with argon2 instead of CRYPT_MD5:

* ``web_user`` — one row per login: the argon2 hash, the admin flag, the
  preferences (language, rows per page) and a ``session_version`` that a
  password change or deletion bumps, so every signed session cookie issued
  before stops working (cookies cannot be recalled otherwise);
* ``web_user_address`` — the addresses a user owns (one or more); the
  quarantine pages show a user the messages addressed to these only;
* ``web_session`` — one row per logged-in session (the SHA-256 of the
  cookie's random session id): a cookie is honoured only while its row
  exists, so logout, a password change and the user's removal end sessions
  on the server, whatever a saved cookie says;
* ``web_login_throttle`` — login attempts claimed per (login name, client)
  pair and per client, in the database so that every worker and every
  gateway sharing it count together.  An attempt is claimed (one atomic
  upsert) *before* the password is checked, so concurrent attempts cannot
  pass the limit; past ``free`` attempts a pair waits a delay that doubles at
  each attempt (progressive, for that pair only: a stranger's failures never
  lock the right password out from the user's own client).

Every function takes a SQLAlchemy ``Connection`` (run through
:meth:`mailsift.storage.db.Database.call` or ``run``).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, case, delete, or_, select, update
from sqlalchemy.engine import Connection, Row

from mailsift.errors import ConfigError
from mailsift.storage.schema import (
    web_login_throttle_table,
    web_session_table,
    web_user_address_table,
    web_user_table,
)
from mailsift.storage.sql import delete_batch, upsert

if TYPE_CHECKING:
    from argon2 import PasswordHasher

LANGUAGES = ("en", "af", "cs", "de", "es", "fr", "it", "lt", "nl", "pl", "pt", "sk", "sv", "tr", "zh_CN")
"""Languages a user may choose (those of mailsift's catalogs); ``""``: no preference (the browser's language)."""
ROWS_CHOICES = (10, 25, 50, 100, 200)
DEFAULT_ROWS = 50
MAX_LOGIN = 256
MAX_ADDRESS = 320
MIN_PASSWORD_LENGTH = 10
"""The shortest password ``mailsift user add|passwd`` take (``webq(..., min_password_length=...)``)."""


@dataclass(frozen=True)
class User:
    """A logged-in (or listed) web user, with everything the pages need."""

    id: int
    login: str
    is_admin: bool
    addresses: tuple[str, ...]
    language: str = "en"
    rows: int = DEFAULT_ROWS


@dataclass(frozen=True)
class StoredUser:
    """A user row with its secret parts (never handed to templates)."""

    user: User
    password_hash: str
    session_version: int


# --------------------------------------------------------------------------- passwords


@functools.cache
def hasher() -> PasswordHasher:
    """argon2id with argon2-cffi's default (RFC 9106 low-memory) parameters."""
    from argon2 import PasswordHasher  # at the first password: `mailsift serve` without webq never loads it

    return PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against when the login is unknown: same work, same time, same answer."""
    return hasher().hash("mailsift-no-such-user")


def hash_password(password: str) -> str:
    if not password:
        raise ConfigError("the password must not be empty")
    return hasher().hash(password)


def check_new_password(password: str, min_length: int = MIN_PASSWORD_LENGTH) -> None:
    """ConfigError unless ``password`` may be set: at least ``min_length`` characters, no line breaks.

    For every place a password is chosen (``mailsift user add|passwd``, a user changing their own).
    """
    if not password:
        raise ConfigError("the password must not be empty")
    if len(password) < min_length:
        raise ConfigError(f"the password is too short: at least {min_length} characters, please")
    if "\n" in password or "\r" in password or "\0" in password:
        raise ConfigError("the password must not contain line breaks or NUL characters")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; with ``None`` (unknown user) a dummy verify, then False."""
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    try:
        ok = hasher().verify(password_hash or dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


# --------------------------------------------------------------------------- names


def normalize_login(login: str) -> str:
    login = login.strip().lower()
    if not login or len(login) > MAX_LOGIN or any(c.isspace() or not c.isprintable() for c in login):
        raise ConfigError(f"bad login {login!r}: a non-empty name without spaces or control characters")
    return login


def login_name(typed: str, userconv: Sequence[tuple[re.Pattern[str], str]]) -> str:
    """The stored login for a typed name: ``userconv`` first, then lower case — the same for the login
    page and for ``mailsift user add|passwd|delete`` (finding 1 of issue 13: they differed)."""
    return convert_login(typed.strip(), userconv).strip().lower()


def new_login(typed: str, userconv: Sequence[tuple[re.Pattern[str], str]]) -> str:
    """The login to store for a new user typed as ``typed``: ConfigError if either form is bad.

    The typed name must be one a person can type at the login page (no spaces
    or control characters), and what ``userconv`` makes of it must be a valid
    login; a login with ``@`` must be an address (it owns that address).
    """
    normalize_login(typed)
    login = login_name(typed, userconv)
    try:
        normalize_login(login)
    except ConfigError:
        raise ConfigError(f"bad login {typed!r}: userconv makes it {login!r}, not a valid login") from None
    if "@" in login:
        try:
            if normalize_address(login) != login or login.startswith("@") or login.count("@") != 1:
                raise ConfigError(login)
        except ConfigError:
            raise ConfigError(f"bad login {login!r}: a login with @ must be an address, user@domain") from None
    return login


def normalize_address(address: str) -> str:
    """``user@domain``, or ``@domain`` for a domain's admin (all of that domain's mail and statistics)."""
    address = address.strip().strip("<>").lower()
    local, at, domain = address.rpartition("@")
    if address.startswith("@"):
        local = "*"  # a domain entry: no local part
    if not at or not local or not domain or len(address) > MAX_ADDRESS or any(c.isspace() for c in address):
        raise ConfigError(f"bad address {address!r}: user@domain, or @domain for a domain admin")
    return address


def convert_login(login: str, userconv: Sequence[tuple[re.Pattern[str], str]]) -> str:
    """SAGATOR's ``userconv``: the first rule whose regex matches the login name rewrites it."""
    for pattern, replacement in userconv:
        if pattern.search(login):
            return pattern.sub(replacement, login, count=1)
    return login


def compile_userconv(rules: Sequence[tuple[str, str]]) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Check ``[(regex, replacement), ...]`` at config time; ConfigError if bad."""
    compiled = []
    for rule in rules:
        if not isinstance(rule, tuple | list) or len(rule) != 2 or not all(isinstance(x, str) for x in rule):
            raise ConfigError(f"userconv: each rule must be (regex, replacement), got {rule!r}")
        try:
            pattern = re.compile(rule[0])
            pattern.sub(rule[1], "")  # a bad group reference in the replacement fails here
        except (re.error, IndexError) as error:
            raise ConfigError(f"userconv: bad rule {rule!r}: {error}") from None
        compiled.append((pattern, rule[1]))
    return tuple(compiled)


# --------------------------------------------------------------------------- queries


def _addresses(connection: Connection, user_id: int) -> tuple[str, ...]:
    a = web_user_address_table.c
    return tuple(connection.execute(select(a.address).where(a.user_id == user_id).order_by(a.address)).scalars())


def _stored(connection: Connection, row: Row[Any]) -> StoredUser:
    addresses = _addresses(connection, row.id)
    if "@" in row.login and row.login not in addresses:  # a login that is an address owns that address
        addresses = (*addresses, row.login)
    user = User(row.id, row.login, bool(row.is_admin), addresses, row.language, row.rows)
    return StoredUser(user, row.password_hash, row.session_version)


def find_user(connection: Connection, login: str) -> StoredUser | None:
    """The user with ``login`` (already converted by userconv), or None."""
    row = connection.execute(select(web_user_table).where(web_user_table.c.login == login.strip().lower())).first()
    return None if row is None else _stored(connection, row)


def load_user(connection: Connection, user_id: int) -> StoredUser | None:
    row = connection.execute(select(web_user_table).where(web_user_table.c.id == user_id)).first()
    return None if row is None else _stored(connection, row)


def add_user(
    connection: Connection,
    login: str,
    password_hash: str,
    *,
    is_admin: bool = False,
    addresses: Sequence[str] = (),
    now: float,
) -> int:
    """Create a user; ConfigError if the login exists. Returns the id."""
    login = normalize_login(login)
    if find_user(connection, login) is not None:
        raise ConfigError(f"user {login!r} exists already")
    user_id = connection.execute(
        web_user_table.insert()
        .values(
            login=login,
            password_hash=password_hash,
            is_admin=int(is_admin),
            language="",  # no preference: the browser's language (web/templating.page_language)
            rows=DEFAULT_ROWS,
            session_version=1,
            created=now,
        )
        .returning(web_user_table.c.id)
    ).scalar_one()
    set_addresses(connection, user_id, addresses)
    return int(user_id)


def set_addresses(connection: Connection, user_id: int, addresses: Sequence[str]) -> None:
    """Replace the user's addresses."""
    clean = sorted({normalize_address(a) for a in addresses})
    connection.execute(delete(web_user_address_table).where(web_user_address_table.c.user_id == user_id))
    if clean:
        connection.execute(web_user_address_table.insert(), [{"user_id": user_id, "address": a} for a in clean])


def update_user(
    connection: Connection,
    login: str,
    *,
    password_hash: str | None = None,
    is_admin: bool | None = None,
    addresses: Sequence[str] | None = None,
) -> bool:
    """Change a user; a new password also ends every session of the user. False if no such user."""
    stored = find_user(connection, normalize_login(login))
    if stored is None:
        return False
    u = web_user_table.c
    values: dict[str, object] = {}
    if password_hash is not None:
        values.update(password_hash=password_hash, session_version=u.session_version + 1)
    if is_admin is not None:
        values.update(is_admin=int(is_admin), session_version=u.session_version + 1)
    if values:
        connection.execute(update(web_user_table).where(u.id == stored.user.id).values(**values))
        end_user_sessions(connection, stored.user.id)
    if addresses is not None:
        set_addresses(connection, stored.user.id, addresses)
    return True


def delete_user(connection: Connection, login: str) -> bool:
    stored = find_user(connection, normalize_login(login))
    if stored is None:
        return False
    connection.execute(delete(web_user_address_table).where(web_user_address_table.c.user_id == stored.user.id))
    connection.execute(delete(web_user_table).where(web_user_table.c.id == stored.user.id))
    end_user_sessions(connection, stored.user.id)
    return True


def list_users(connection: Connection) -> list[User]:
    rows = connection.execute(select(web_user_table).order_by(web_user_table.c.login)).all()
    return [_stored(connection, row).user for row in rows]


def set_preferences(connection: Connection, user_id: int, language: str, rows: int) -> None:
    if (language and language not in LANGUAGES) or rows not in ROWS_CHOICES:
        raise ConfigError(f"bad preferences: language {language!r}, rows {rows!r}")
    connection.execute(
        update(web_user_table).where(web_user_table.c.id == user_id).values(language=language, rows=rows)
    )


# --------------------------------------------------------------------------- sessions


def session_key(session_id: str) -> str:
    """What the database holds of a session id: its SHA-256 (a reader of the database cannot log in)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_session(connection: Connection, session_id: str, user_id: int, now: float, lifetime: float) -> None:
    """Record a new session of ``user_id`` (and forget sessions older than ``lifetime``)."""
    s = web_session_table.c
    connection.execute(delete(web_session_table).where(s.created < now - lifetime))
    connection.execute(
        web_session_table.insert().values(id=session_key(session_id), user_id=user_id, created=now, seen=now)
    )


def load_session(
    connection: Connection, session_id: str, now: float, lifetime: float, idle: float
) -> StoredUser | None:
    """The user of a live session; None (and the row removed) if it ended, expired or was never there.

    ``seen`` is refreshed at most once a minute (one write per minute per session, not per request).
    """
    s = web_session_table.c
    key = session_key(session_id)
    row = connection.execute(select(s.user_id, s.created, s.seen).where(s.id == key)).first()
    if row is None:
        return None
    if row.created <= now - lifetime or row.seen <= now - idle:
        connection.execute(delete(web_session_table).where(s.id == key))
        return None
    if row.seen < now - 60:
        connection.execute(update(web_session_table).where(s.id == key).values(seen=now))
    return load_user(connection, row.user_id)


def end_session(connection: Connection, session_id: str) -> None:
    connection.execute(delete(web_session_table).where(web_session_table.c.id == session_key(session_id)))


def end_user_sessions(connection: Connection, user_id: int) -> None:
    """End every session of ``user_id`` (password or rights changed, user removed)."""
    connection.execute(delete(web_session_table).where(web_session_table.c.user_id == user_id))


# --------------------------------------------------------------------------- login throttling


def _delay(failures: ColumnElement[Any], free: int, first_delay: float, longest: float) -> ColumnElement[Any]:
    """The wait after the last checked attempt, as SQL over the stored count: 0 below ``free``, then
    ``first_delay`` doubling at each attempt, at most ``longest``."""
    steps: list[tuple[ColumnElement[bool], float]] = [(failures < free, 0.0)]
    delay, n = first_delay, free
    while delay < longest and n < free + 40:
        steps.append((failures == n, delay))
        delay, n = delay * 2, n + 1
    return case(*steps, else_=longest)


def claim_attempt(
    connection: Connection, key: str, now: float, *, free: int, window: float, delay: float = 0.0
) -> bool:
    """Claim one login attempt on ``key`` before checking the password: one atomic upsert.

    Allowed when the key is new or quiet for ``window`` (it starts over), has fewer than ``free``
    attempts, or (``delay`` > 0: a progressive delay) waited long enough since its last checked
    attempt.  An allowed attempt is counted and its time kept; a refused one changes nothing.
    Of concurrent callers, at most the limit are allowed (the database serializes the upserts).
    Whether this call was allowed is read back from the row: its time is ``now`` only if this
    call wrote it (``time.time()`` does not repeat between two attempts on one key).
    """
    t = web_login_throttle_table.c
    stale = t.window_start <= now - window
    if delay > 0:
        allowed = or_(stale, t.failures < free, t.window_start + _delay(t.failures, free, delay, window) <= now)
    else:
        allowed = or_(stale, t.failures < free)
    row = upsert(
        connection,
        web_login_throttle_table,
        {"key": key, "failures": 1, "window_start": now},
        update={
            "failures": case((stale, 1), (allowed, t.failures + 1), else_=t.failures),
            "window_start": case((allowed, now), else_=t.window_start),
        },
        returning=[t.window_start],
    ).first()
    return row is not None and float(row.window_start) == now


def forgive_attempt(connection: Connection, key: str) -> None:
    """Give back one claimed attempt (a successful login does not count against its client)."""
    t = web_login_throttle_table.c
    connection.execute(
        update(web_login_throttle_table).where(t.key == key, t.failures > 0).values(failures=t.failures - 1)
    )


def prune_attempts(connection: Connection, before: float, limit: int) -> int:
    """Forget at most ``limit`` keys whose last checked attempt was before ``before`` (older than the
    login window: they start over anyway); returns how many.  By :mod:`mailsift.cli.housekeeping`."""
    t = web_login_throttle_table.c
    return delete_batch(connection, web_login_throttle_table, t.window_start < before, limit)


def clear_failures(connection: Connection, keys: Sequence[str]) -> None:
    connection.execute(delete(web_login_throttle_table).where(web_login_throttle_table.c.key.in_(list(keys))))
