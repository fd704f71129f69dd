"""Per-domain and per-user policies (simscan's ``simcontrol``) and white/black lists.

Both live in the database (``DATABASE``), so changing them takes effect with
the next message, without a restart: scanners look them up once per message
and never cache across messages.

Policies
========

A policy is a ``simcontrol`` line: a key and its settings::

    postmaster@example.com:clam=yes,spam=no,attach=.txt:.com
    example.com:clam=no,spam=yes,attach=.mp3
    :clam=yes,spam=yes,trophie=yes,spam_hits=20.1

The key is an address, a domain, or empty (the default).  ``yes``/``no``
settings are flags (``clam``, ``spam``, ``trophie``, ``spam_passthru`` or any
name a ``policy_enabled`` scanner asks for); ``attach`` is a ``:``-separated
list of filename endings to block; ``spam_hits`` the spam score to reject at;
other settings (``spamuser``, ``regex``...) are kept as text.

Lookup order, exactly simscan's (``per_domain_email_lookup``): the default,
then the sender, then the recipient; for each address its domain, then each
qmail extension prefix (``test-list-owner@x`` looks up ``x``, ``test@x``,
``test-list@x``, ``test-list-owner@x``).  Each entry found overrides the
settings it names, so an address beats its domain and a domain the default;
``attach`` lists add up.  Without any entry every flag is off ("no scans will
be done"), unless the scanner says otherwise.

Several recipients (one answer for the whole message under ``smtpd``): each
recipient's policy is resolved as above, then the strictest wins: a flag is
on when any recipient's policy turns it on (``spam_passthru`` only when every
one does), the ``attach`` lists add up, the lowest ``spam_hits`` counts.
simscan instead let the last recipient override the others, so one recipient
could switch virus scanning off for all; front ends that answer per recipient
(``lmtpd``) evaluate one recipient at a time and get simscan's exact result.

White and black lists
=====================

SAGATOR's ``add_listed``: entries on the ``white`` or ``black`` list match a
message's ``sender``, a ``recipient`` or the ``client`` address; an entry is
global (owner ``''``) or belongs to a user (an address) or a domain, and may
expire.  Values: ``user@example.com`` (that address), ``example.com`` or
``@example.com`` (that domain), for clients an IP address or network
(``192.0.2.0/24``).

For each recipient the verdict comes from its own entries first, then its
domain's, then the global ones: the first of these scopes with a matching
entry decides (a user's whitelist beats a global blacklist, a user's
blacklist beats a global whitelist), and within one scope **the whitelist
beats the blacklist** (as SAGATOR's and amavis's lists: a listed partner is
never refused by a broader blacklist entry).  A message with several
recipients is whitelisted (or blacklisted) only when every recipient's
verdict is the same; otherwise it is scanned as usual.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, or_, select
from sqlalchemy.engine import Connection

from mailsift.errors import ConfigError
from mailsift.message.address import is_valid
from mailsift.storage.db import Database
from mailsift.storage.schema import listed_table, user_policy_table
from mailsift.storage.sql import upsert

# --------------------------------------------------------------------------- limits

MAX_ADDRESS = 512
"""Longest address looked up (longer ones are looked up by domain and default only)."""
MAX_EXTENSIONS = 32
"""Most qmail extension parts looked up for one address."""
MAX_LINE = 4096
"""Longest simcontrol line accepted."""
EXTENSION_SEPARATOR = "-"
"""qmail's extension separator (simscan's ``MAIL_EXT_TOKENS``)."""

LISTS = ("white", "black")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
FIELDS = ("sender", "recipient", "client")

# --------------------------------------------------------------------------- the database


def resolve_database(database: Database | None) -> Database:
    """``database``, or a ConfigError when there is none.

    There is no process-wide default: a policy or list scanner is given
    ``db=``, or the accepted config's ``DATABASE`` when the config is loaded
    (:class:`mailsift.settings.SettingsBound`).
    """
    if database is None:
        raise ConfigError("no database for policies and lists: load a config with DATABASE, or pass db=DATABASE")
    return database


# --------------------------------------------------------------------------- simcontrol settings

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SPLIT = re.compile(r"[,\"'\r\n]+")
_YES_NO = {"yes": True, "no": False}
_KEY = re.compile(r"^[^\s:,@]*@?[^\s:,@]*$")
_TEXT_VALUE = re.compile(r"^[^\s,=\"']{1,1024}$")


def normalize_key(key: str) -> str:
    """A policy key in lower case: ``''``, ``example.com`` or ``user@example.com``."""
    key = key.strip().lower()
    if len(key) > MAX_ADDRESS or not _KEY.match(key) or key.startswith("@") or key.endswith("@"):
        raise ConfigError(f"bad policy key {key!r}: use an address, a domain, or '' for the default")
    return key


def parse_settings(text: str) -> dict[str, str]:
    """``clam=yes,spam=no,attach=.txt:.com,spam_hits=20.1`` → an ordered, checked dict.

    Names are lower case; yes/no values are normalized; ``attach`` is a list of
    filename endings separated by ``:`` (stored lower case); ``spam_hits`` a
    non-negative number.  Anything else raises ConfigError with the reason.
    """
    settings: dict[str, str] = {}
    for item in _SPLIT.split(text.strip()):
        name, equals, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not name and not equals:
            continue  # blanks between commas
        if not equals or not _NAME.match(name) or not value:
            raise ConfigError(f"bad setting {item!r}: expected name=value, e.g. clam=yes")
        settings[name] = _check_value(name, value)
    return settings


def _check_value(name: str, value: str) -> str:
    if name == "attach":
        endings = [ending.lower() for ending in value.split(":") if ending]
        if not endings or not all(_TEXT_VALUE.match(e) and len(e) <= 64 for e in endings):
            raise ConfigError(f"bad attach list {value!r}: filename endings separated by ':', e.g. .exe:.scr")
        return ":".join(dict.fromkeys(endings))
    if name == "spam_hits":
        try:
            hits = float(value)
        except ValueError:
            hits = math.nan
        if not math.isfinite(hits) or hits <= 0:
            raise ConfigError(f"bad spam_hits {value!r}: a positive number, e.g. 20.1")
        return repr(hits)
    if value.lower() in _YES_NO:
        return value.lower()
    if name in FLAGS:
        raise ConfigError(f"bad value for {name}: {value!r} (yes or no)")
    if not _TEXT_VALUE.match(value):
        raise ConfigError(f"bad value for {name}: {value!r}")
    return value


FLAGS = ("clam", "spam", "trophie", "spam_passthru")
"""simscan's yes/no settings (other names may be yes/no too)."""
LENIENT_FLAGS = frozenset({"spam_passthru"})
"""Flags that scan *less* when on: with several recipients they hold only if every one sets them."""


def format_settings(settings: Mapping[str, str]) -> str:
    """The canonical simcontrol text of ``settings``."""
    return ",".join(f"{name}={value}" for name, value in settings.items())


@dataclass(frozen=True, slots=True)
class PolicyLine:
    """One parsed simcontrol line."""

    key: str
    settings: dict[str, str]
    lineno: int = 0


def parse_simcontrol(lines: Iterable[str]) -> list[PolicyLine]:
    """Parse a simcontrol file: ``key:settings`` lines; blank lines and ``#`` comments skipped.

    Raises ConfigError naming the line of the first bad entry (nothing is
    half-imported).  A key listed twice keeps its last line, as simscanmk's cdb.
    """
    parsed: dict[str, PolicyLine] = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_LINE:
            raise ConfigError(f"line {lineno}: longer than {MAX_LINE} characters")
        key, colon, text = line.partition(":")
        if not colon:
            raise ConfigError(f"line {lineno}: expected key:settings, e.g. example.com:clam=yes,spam=no")
        try:
            entry = PolicyLine(normalize_key(key), parse_settings(text), lineno)
        except ConfigError as error:
            raise ConfigError(f"line {lineno}: {error.message}") from None
        parsed.pop(entry.key, None)
        parsed[entry.key] = entry
    return list(parsed.values())


# --------------------------------------------------------------------------- policy resolution


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings in force for one message (or one recipient)."""

    settings: Mapping[str, str] = field(default_factory=dict)
    attach: tuple[str, ...] = ()
    matched: tuple[str, ...] = ()
    """The keys found, in the order applied (``''`` is the default)."""

    def enabled(self, flag: str, default: bool = False) -> bool:
        """Whether ``flag=yes``; ``default`` when no entry sets it (simscan: off)."""
        value = self.settings.get(flag)
        return default if value is None else value == "yes"

    @property
    def spam_hits(self) -> float | None:
        value = self.settings.get("spam_hits")
        return None if value is None else float(value)

    def describe(self) -> str:
        """``clam=yes,... (from example.com, bob@example.com)`` for logs and the CLI."""
        shown = dict(self.settings)
        if self.attach:
            shown["attach"] = ":".join(self.attach)
        sources = ", ".join(key or "default" for key in self.matched) or "no entry"
        return f"{format_settings(shown) or '(nothing set)'} (from {sources})"


def address_keys(address: str) -> list[str]:
    """The keys simscan looks up for ``address``, in order: domain, then each extension prefix."""
    address = address.strip().strip("<>").lower()
    local, at, domain = address.rpartition("@")
    if not at or not domain or not local:
        return []
    keys = [domain]
    if len(address) > MAX_ADDRESS:
        return keys
    parts = local.split(EXTENSION_SEPARATOR)[:MAX_EXTENSIONS]
    for count in range(1, len(parts) + 1):
        keys.append(f"{EXTENSION_SEPARATOR.join(parts[:count])}@{domain}")
    return list(dict.fromkeys(keys))


def _layer(stored: Mapping[str, dict[str, str]], keys: Iterable[str]) -> Policy:
    settings: dict[str, str] = {}
    attach: list[str] = []
    matched: list[str] = []
    for key in keys:
        entry = stored.get(key)
        if entry is None:
            continue
        matched.append(key)
        for name, value in entry.items():
            if name == "attach":
                attach.extend(e for e in value.split(":") if e not in attach)
            else:
                settings[name] = value
    return Policy(settings, tuple(attach), tuple(matched))


def _strictest(policies: Sequence[Policy]) -> Policy:
    """Combine recipients' policies: any scan on wins, attach lists add up, lowest spam_hits."""
    if len(policies) == 1:
        return policies[0]
    settings: dict[str, str] = {}
    attach: list[str] = []
    matched: list[str] = []
    for policy in policies:
        matched.extend(k for k in policy.matched if k not in matched)
        attach.extend(e for e in policy.attach if e not in attach)
        for name, value in policy.settings.items():
            old = settings.get(name)
            if old is None:
                settings[name] = value
            elif name == "spam_hits":
                settings[name] = min(old, value, key=float)
            elif {old, value} == {"yes", "no"}:
                settings[name] = "no" if name in LENIENT_FLAGS else "yes"
    for name in list(settings):  # a lenient flag unset for some recipient is not on for all
        if name in LENIENT_FLAGS and not all(p.settings.get(name) == "yes" for p in policies):
            settings[name] = "no"
    return Policy(settings, tuple(attach), tuple(matched))


def message_keys(sender: str, recipients: Sequence[str]) -> list[str]:
    """Every key a message's lookup may touch (for one query)."""
    keys = ["", *address_keys(sender)]
    for recipient in recipients:
        keys.extend(address_keys(recipient))
    return list(dict.fromkeys(keys))


def resolve_policy(stored: Mapping[str, dict[str, str]], sender: str, recipients: Sequence[str]) -> Policy:
    """The policy for a message from the stored entries (see the module docstring)."""
    base = ["", *address_keys(sender)]
    if not recipients:
        return _layer(stored, base)
    return _strictest([_layer(stored, [*base, *address_keys(r)]) for r in recipients])


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load_policies(connection: Connection, keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """The stored entries for ``keys`` (missing keys are absent)."""
    table = user_policy_table.c
    found: dict[str, dict[str, str]] = {}
    for chunk in _chunks(keys):
        for row in connection.execute(select(table.key, table.settings).where(table.key.in_(chunk))):
            found[row.key] = parse_settings(row.settings)
    return found


def lookup_policy(connection: Connection, sender: str, recipients: Sequence[str]) -> Policy:
    """One query, then :func:`resolve_policy`: the policy for a message."""
    return resolve_policy(load_policies(connection, message_keys(sender, recipients)), sender, recipients)


def set_policy(connection: Connection, key: str, settings: str | Mapping[str, str], now: float) -> str:
    """Store (replace) the policy of ``key``; returns its canonical settings text."""
    key = normalize_key(key)
    parsed = parse_settings(settings) if isinstance(settings, str) else parse_settings(format_settings(settings))
    text = format_settings(parsed)
    upsert(
        connection,
        user_policy_table,
        {"key": key, "settings": text, "updated": now},
        update={"settings": text, "updated": now},
    )
    return text


def delete_policy(connection: Connection, key: str) -> bool:
    """Delete the policy of ``key``; whether there was one."""
    result = connection.execute(delete(user_policy_table).where(user_policy_table.c.key == normalize_key(key)))
    return bool(result.rowcount)


def list_policies(connection: Connection, keys: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(key, settings)`` of the stored policies (all, or those of ``keys``), sorted."""
    table = user_policy_table.c
    query = select(table.key, table.settings).order_by(table.key)
    if keys:
        query = query.where(table.key.in_([normalize_key(k) for k in keys]))
    return [(row.key, row.settings) for row in connection.execute(query)]


def import_simcontrol(connection: Connection, entries: Sequence[PolicyLine], now: float, replace: bool = False) -> int:
    """Store parsed simcontrol lines (in one transaction); ``replace`` drops the others first."""
    if replace:
        connection.execute(delete(user_policy_table))
    for entry in entries:
        set_policy(connection, entry.key, entry.settings, now)
    return len(entries)


# --------------------------------------------------------------------------- white and black lists


def normalize_value(list_field: str, value: str) -> str:
    """A list value in its stored form; ConfigError if it cannot match anything."""
    value = value.strip().lower()
    if list_field == "client":
        try:
            return str(ipaddress.ip_network(value.strip("[]"), strict=False))
        except ValueError:
            raise ConfigError(f"bad client {value!r}: an IP address or network like 192.0.2.0/24") from None
    if list_field not in ("sender", "recipient"):
        raise ConfigError(f"bad list field {list_field!r}: one of {', '.join(FIELDS)}")
    value = value.strip("<>")
    if value.startswith("@"):
        value = value[1:]
    local, at, domain = value.rpartition("@")
    if not value or len(value) > MAX_ADDRESS or any(c.isspace() for c in value) or (at and not (local and domain)):
        raise ConfigError(f"bad {list_field} {value!r}: an address or a domain")
    return value


def mailbox_owner(address: str) -> str:
    """``address`` as the owner of a user's own list entry (the web's and the digest's "whitelist sender").

    Only a whole mailbox, ``local@domain`` that could be written into ``RCPT TO``,
    is one: a recipient without ``@`` such as ``example.com`` (which a front end
    may have accepted) would make the entry a whole domain's, and an empty one
    a global entry.  ConfigError otherwise; the owner in its stored form.
    """
    address = address.strip().strip("<>") if isinstance(address, str) else ""
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or "@" in local or not is_valid(address):
        raise ConfigError(f"{address[:80]!r} is not a mailbox (local@domain): no list entry is made for it")
    return normalize_owner(address)


def normalize_owner(owner: str) -> str:
    """``''`` (global), a domain or an address."""
    return "" if not owner.strip() else normalize_key(owner)


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One white/black list entry."""

    id: int
    owner: str
    list: str
    field: str
    value: str
    expires: float | None
    created: float
    comment: str

    def matches(
        self, sender: str, recipient: str, client: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    ) -> bool:
        """Whether this entry matches a message's sender, this recipient or the client."""
        if self.field == "client":
            if client is None:
                return False
            network = ipaddress.ip_network(self.value)
            return client.version == network.version and client in network
        address = sender if self.field == "sender" else recipient
        if "@" in self.value:
            return address == self.value
        return address.rpartition("@")[2] == self.value and "@" in address


def add_listed(
    connection: Connection,
    list_name: str,
    list_field: str,
    value: str,
    *,
    owner: str = "",
    expires: float | None = None,
    comment: str = "",
    now: float,
) -> ListEntry:
    """SAGATOR's ``add_listed``: add (or renew) an entry; returns it."""
    if list_name not in LISTS:
        raise ConfigError(f"bad list {list_name!r}: white or black")
    if list_field not in FIELDS:
        raise ConfigError(f"bad list field {list_field!r}: one of {', '.join(FIELDS)}")
    if expires is not None and (not math.isfinite(expires)):
        raise ConfigError(f"bad expiry {expires!r}")
    value, owner = normalize_value(list_field, value), normalize_owner(owner)
    comment = " ".join(comment.split())[:256]
    row = upsert(
        connection,
        listed_table,
        {
            "owner": owner,
            "list": list_name,
            "field": list_field,
            "value": value,
            "expires": expires,
            "created": now,
            "comment": comment,
        },
        keys=("owner", "list", "field", "value"),
        update={"expires": expires, "comment": comment, "created": now},
        returning=tuple(listed_table.c),
    ).one()
    return ListEntry(*row)


def remove_listed(connection: Connection, list_name: str, list_field: str, value: str, *, owner: str = "") -> bool:
    """Remove one entry; whether it was there."""
    table = listed_table.c
    result = connection.execute(
        delete(listed_table).where(
            table.owner == normalize_owner(owner),
            table.list == list_name,
            table.field == list_field,
            table.value == normalize_value(list_field, value),
        )
    )
    return bool(result.rowcount)


def list_entries(connection: Connection, *, owner: str | None = None, now: float | None = None) -> list[ListEntry]:
    """Entries (of ``owner`` when given; unexpired at ``now`` when given), sorted."""
    table = listed_table.c
    query = select(listed_table).order_by(table.owner, table.list, table.field, table.value)
    if owner is not None:
        query = query.where(table.owner == normalize_owner(owner))
    if now is not None:
        query = query.where(or_(table.expires.is_(None), table.expires > now))
    return [ListEntry(*row) for row in connection.execute(query)]


def purge_listed(connection: Connection, now: float) -> int:
    """Delete expired entries; how many."""
    result = connection.execute(delete(listed_table).where(listed_table.c.expires <= now))
    return int(result.rowcount)


def _owner_scopes(recipient: str) -> list[str]:
    """A recipient's list owners, most specific first: its address keys, its domain, global."""
    keys = address_keys(recipient)
    return [*reversed(keys[1:]), *keys[:1], ""] if keys else [""]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the lists say about a message: ``white``, ``black`` or ``''`` (not listed)."""

    list: str = ""
    entries: tuple[ListEntry, ...] = ()

    def describe(self) -> str:
        return "; ".join(
            f"{e.list}listed {e.field} {e.value}" + (f" by {e.owner}" if e.owner else " (global)") for e in self.entries
        )


def _client_ip(client: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(client.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def resolve_verdict(entries: Sequence[ListEntry], sender: str, recipients: Sequence[str], client: str) -> Verdict:
    """The lists' verdict for a message from unexpired ``entries`` (see the module docstring)."""
    sender = sender.strip().strip("<>").lower()
    ip = _client_ip(client)
    by_owner: dict[str, list[ListEntry]] = {}
    for entry in entries:
        by_owner.setdefault(entry.owner, []).append(entry)
    verdicts: list[Verdict] = []
    for recipient in recipients or [""]:
        recipient = recipient.strip().strip("<>").lower()
        verdict = Verdict()
        for owner in _owner_scopes(recipient):
            hits = [e for e in by_owner.get(owner, ()) if e.matches(sender, recipient, ip)]
            if hits:
                chosen = "white" if any(e.list == "white" for e in hits) else "black"
                verdict = Verdict(chosen, tuple(e for e in hits if e.list == chosen))
                break
        verdicts.append(verdict)
    lists = {v.list for v in verdicts}
    if len(lists) != 1 or "" in lists:
        return Verdict()
    found: list[ListEntry] = []
    for verdict in verdicts:
        found.extend(e for e in verdict.entries if e not in found)
    return Verdict(verdicts[0].list, tuple(found))


def lookup_verdict(connection: Connection, sender: str, recipients: Sequence[str], client: str, now: float) -> Verdict:
    """One query for every owner the message's recipients have, then :func:`resolve_verdict`."""
    owners = list(dict.fromkeys(o for r in (recipients or [""]) for o in _owner_scopes(r.strip("<>").lower())))
    table = listed_table.c
    entries: list[ListEntry] = []
    for chunk in _chunks(owners):
        query = select(listed_table).where(table.owner.in_(chunk), or_(table.expires.is_(None), table.expires > now))
        entries.extend(ListEntry(*row) for row in connection.execute(query))
    return resolve_verdict(entries, sender, recipients, client)


Clock = Callable[[], float]
DEFAULT_CLOCK: Clock = time.time
