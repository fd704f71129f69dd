"""Scanners that honour per-domain/per-user policies and the white/black lists.

Policies (simscan's ``simcontrol``, see :mod:`mailsift.storage.policies`)::

    SCANNERS = [
        listed(),                                              # white -> deliver, black -> reject
        policy_enabled('clam', quarantine('virus', clamd(CLAMD))),
        reject(policy_attach()),                               # the policy's attach=.exe:.scr
        policy_enabled('spam', policy_spam_hits(spamassassind(SPAMD))),   # detected: rejected
    ]

* ``policy_enabled(flag, *scanners, default=False)`` runs its scanners only
  when the message's policy says ``flag=yes``; otherwise the result is clean.
  ``default`` is used when no entry sets the flag (simscan: no scans).
* ``policy_attach()`` detects attachments whose filename ends with one of the
  policy's ``attach`` endings (case-insensitive, every candidate filename).
* ``policy_spam_hits(spam_scanner)`` rescales a spam engine's result to the
  policy's ``spam_hits``: level = score / spam_hits (SAGATOR's levels, where
  1.0 is the threshold).  Without ``spam_hits`` the engine's own threshold
  stays, and a policy with ``spam_passthru=yes`` (simscan's
  ``--enable-spam-passthru``, per domain) delivers what the engine calls spam,
  tagged (``X-Spam-Status: Yes``, ``X-Spam-Flag: YES``), instead of rejecting it;
  over ``spam_hits`` it is rejected all the same (simscan: "spam-hits disables
  passthru").  Passthru is the result's own ``deliver`` action: a ``reject(...)``
  around ``policy_spam_hits`` would override it (a detection is rejected anyway).
* ``listed()`` consults both lists; ``whitelisted()`` only delivers
  whitelisted mail and ``blacklisted()`` only rejects blacklisted mail, both
  by the same verdict, so their order in ``SCANNERS`` cannot contradict the
  lists' precedence (whitelist beats blacklist).  A whitelisted message is a
  detection with a ``deliver`` action: evaluation stops there (SAGATOR's
  first-detection rule) and the message is delivered unscanned.

Each scanner takes ``db=`` (a :class:`~mailsift.storage.db.Database`), or
leaves it to the config's ``DATABASE``, which the scanner receives when its
config is accepted (``bind_settings``, called by :func:`mailsift.config.load`
after every check passed): a config that is rejected never reaches the
scanners of the running one, and nothing module-wide names a database.
Lookups are made once per
message (shared by all policy scanners of the message, cached on the
:class:`~mailsift.message.mail.Mail` object) and never across messages: a change
made with ``mailsift policy`` or ``mailsift lists`` applies to the next
message.  A database failure raises :class:`~mailsift.errors.DatabaseError`:
the message is tempfailed, never passed with the wrong policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from mailsift import validators
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.message.result import Disposition, Result, SetDisposition
from mailsift.scanners.actions import expand
from mailsift.scanners.base import Interscanner, Scanner, Target
from mailsift.settings import Settings
from mailsift.storage.db import Database
from mailsift.storage.policies import (
    DEFAULT_CLOCK,
    Clock,
    Policy,
    Verdict,
    lookup_policy,
    lookup_verdict,
    resolve_database,
)

# --------------------------------------------------------------------------- per-message cache

_CacheKey = tuple[str, int, str, tuple[str, ...], str]


async def _per_message(mail: Mail, key: _CacheKey, compute: Callable[[], Awaitable[Any]]) -> Any:
    """``compute()`` once per message and key; concurrent callers share one lookup.

    Keyed by the envelope too, so a front end that evaluates one recipient at a
    time (lmtpd) gets each recipient's own answer.  The entry lives in the
    message's own :attr:`~mailsift.message.mail.Mail.memo`, so it goes with it.
    """
    entries: dict[_CacheKey, asyncio.Future[Any]] = mail.memo.setdefault("policy-lookups", {})
    future = entries.get(key)
    if future is None:
        future = entries[key] = asyncio.ensure_future(compute())
    try:
        # shield: one caller being cancelled must not cancel the lookup the others await
        return await asyncio.shield(future)
    except BaseException:
        if future.done() and entries.get(key) is future:
            entries.pop(key, None)  # a failed lookup is retried, not remembered
        raise


def _envelope_key(kind: str, database: Database, mail: Mail) -> _CacheKey:
    envelope = mail.envelope
    return (kind, id(database), envelope.sender, tuple(envelope.recipients), envelope.client_address)


def _check_database(database: Any, what: str) -> Database | None:
    if database is not None and not isinstance(database, Database):
        raise ConfigError(f"{what}: db must be a database like DATABASE or db.sqlite(), got {database!r}")
    return database


class _UsesDatabase:
    """``db=`` when given, else the ``DATABASE`` of the accepted config that holds the scanner."""

    database: Database | None = None
    """``db=``, as given."""
    config_database: Database | None = None
    """The config's ``DATABASE``, set by :meth:`bind_settings` once the config is accepted."""

    def bind_settings(self, settings: Settings) -> None:
        self.config_database = settings.database

    def chosen_database(self) -> Database | None:
        return self.database if self.database is not None else self.config_database


async def message_policy(target: Target, database: Database | None = None) -> Policy:
    """The policy for the target's message (looked up once per message) in ``database``."""
    chosen = resolve_database(database)
    mail = target.mail
    envelope = mail.envelope
    return await _per_message(  # type: ignore[no-any-return]
        mail,
        _envelope_key("policy", chosen, mail),
        lambda: chosen.run(lookup_policy, envelope.sender, list(envelope.recipients)),
    )


async def message_verdict(target: Target, database: Database | None = None, clock: Clock = DEFAULT_CLOCK) -> Verdict:
    """The white/black lists' verdict for the target's message (once per message) in ``database``."""
    chosen = resolve_database(database)
    mail = target.mail
    envelope = mail.envelope
    return await _per_message(  # type: ignore[no-any-return]
        mail,
        _envelope_key("lists", chosen, mail),
        lambda: chosen.run(
            lookup_verdict, envelope.sender, list(envelope.recipients), envelope.client_address, clock()
        ),
    )


# --------------------------------------------------------------------------- policies


class policy_enabled(_UsesDatabase, Interscanner):
    """Run the scanners only when the policy turns ``flag`` on: ``policy_enabled('clam', clamd(...))``."""

    name = "policy_enabled"

    def __init__(self, flag: str, *scanners: Any, default: bool = False, db: Database | None = None) -> None:
        if not isinstance(flag, str) or not flag.isidentifier() or flag != flag.lower():
            raise ConfigError(f"policy_enabled: flag must be a simcontrol name like 'clam' or 'spam', got {flag!r}")
        self.flag, self.default = flag, validators.flag(default, "policy_enabled: default")
        self.database = _check_database(db, self.name)
        super().__init__(*scanners)

    def describe(self) -> str:
        return f"policy_enabled({self.flag!r}" + (", default=True)" if self.default else ")")

    async def scan(self, target: Target) -> Result:
        policy = await message_policy(target, self.chosen_database())
        if not policy.enabled(self.flag, self.default):
            return Result(0.0, "", self.name, f"{self.flag} off by policy: {policy.describe()}")
        return await self.inner(target)


class policy_attach(_UsesDatabase, Scanner):
    """Detect attachments the policy blocks (simscan's ``attach=.exe:.scr``), named ``virname``."""

    name = "policy_attach"

    def __init__(self, virname: str = "Policy.Attachment", *, db: Database | None = None) -> None:
        if not isinstance(virname, str) or not virname:
            raise ConfigError(f"policy_attach: virname must be a non-empty string, got {virname!r}")
        self.virname = virname
        self.database = _check_database(db, self.name)

    async def scan(self, target: Target) -> Result:
        policy = await message_policy(target, self.chosen_database())
        if not policy.attach:
            return Result(0.0, "", self.name)
        parts = [target.part] if target.part is not None else target.mail.parts
        for part in parts:
            for filename in part.filenames:
                lowered = filename.lower()
                for ending in policy.attach:
                    if lowered.endswith(ending):
                        detail = f"bad attachment: {filename} (part {part.path}; {ending} blocked by policy)"
                        return Result(1.0, self.virname, self.name, detail)
        return Result(0.0, "", self.name)


class policy_spam_hits(_UsesDatabase, Interscanner):
    """Judge a spam engine by the policy's ``spam_hits``: ``policy_spam_hits(spamassassind(...))``.

    The wrapped result must carry a ``score`` (a :class:`~mailsift.scanners.engines.common.SpamResult`:
    put action wrappers outside, e.g. ``reject(policy_spam_hits(spamd))``).
    A detection is named ``virname`` when the engine gave no name.
    """

    name = "policy_spam_hits"

    def __init__(self, *scanners: Any, virname: str = "Spam", db: Database | None = None) -> None:
        if not isinstance(virname, str) or not virname:
            raise ConfigError(f"policy_spam_hits: virname must be a non-empty string, got {virname!r}")
        self.virname = virname
        self.database = _check_database(db, self.name)
        super().__init__(*scanners)

    async def scan(self, target: Target) -> Result:
        result = await self.inner(target)
        score = getattr(result, "score", None)
        if not isinstance(score, int | float):
            return result
        policy = await message_policy(target, self.chosen_database())
        hits = policy.spam_hits
        if hits is None:
            if result.detected and policy.enabled("spam_passthru"):
                return _passed_through(result)
            return result
        level = score / hits
        name = (result.name or self.virname) if level >= 1.0 else ""
        detail = f"{result.detail}; " if result.detail else ""
        return replace(result, level=level, name=name, detail=f"{detail}score {score:g} / spam_hits {hits:g} (policy)")


def _passed_through(result: Result) -> Result:
    """simscan's spam passthru: the spam delivered, tagged, instead of rejected."""
    from mailsift.scanners.engines.common import SpamResult  # the engines import much; only needed here
    from mailsift.scanners.engines.spamlevels import spam_headers

    tags = tuple(spam_headers(result, tagged=True)) if isinstance(result, SpamResult) else ()
    detail = f"{result.detail}; " if result.detail else ""
    passed = replace(result, detail=f"{detail}spam_passthru (policy): delivered tagged")
    return passed.with_actions(*tags, SetDisposition(Disposition.DELIVER))


# --------------------------------------------------------------------------- lists


class _Listed(_UsesDatabase, Scanner):
    """Shared shape of ``listed``, ``whitelisted`` and ``blacklisted``."""

    lists: tuple[str, ...] = ("white", "black")

    def __init__(self, *, message: str = "", db: Database | None = None, clock: Clock = DEFAULT_CLOCK) -> None:
        if not isinstance(message, str) or "\n" in message or "\r" in message:
            raise ConfigError(f"{self.name}: message must be one line of text, got {message!r}")
        self.message = message
        self.database = _check_database(db, self.name)
        self.clock = clock

    def describe(self) -> str:
        return f"{self.name}(message={self.message!r})" if self.message else self.name

    async def scan(self, target: Target) -> Result:
        verdict = await message_verdict(target, self.chosen_database(), self.clock)
        if verdict.list not in self.lists:
            return Result(0.0, "", self.name)
        if verdict.list == "white":
            return Result(1.0, "Whitelisted", self.name, verdict.describe(), (SetDisposition(Disposition.DELIVER),))
        result = Result(1.0, "Blacklisted", self.name, verdict.describe())
        text = expand(self.message, result) if self.message else ""
        return result.with_actions(SetDisposition(Disposition.REJECT, text))


class listed(_Listed):
    """White/black lists: whitelisted mail is delivered unscanned, blacklisted mail rejected."""

    name = "listed"


class whitelisted(_Listed):
    """Deliver whitelisted mail unscanned; everything else goes on to the next scanner."""

    name = "whitelisted"
    lists = ("white",)


class blacklisted(_Listed):
    """Reject blacklisted mail (``message=`` the reject text, %V/%S/%D allowed); whitelisted mail is not."""

    name = "blacklisted"
    lists = ("black",)
