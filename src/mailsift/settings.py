"""The global settings of a config file (``STATE_DIR``, ``SMTP_SERVER``, ``HOOKS``,
``DATABASE``...), checked once by :mod:`mailsift.config` and passed in everywhere.

Nothing here is global: a :class:`Settings` belongs to one loaded config, and
the objects that need what it provides (the policy and list scanners need
``DATABASE``) receive it through :class:`SettingsBound` once that config has
passed every check, never before.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mailsift.errors import ConfigError

if TYPE_CHECKING:  # settings is a bottom layer: these are only types
    from mailsift.core.hooks import Hook
    from mailsift.core.poison import poison
    from mailsift.delivery.next_hop import Delivery
    from mailsift.storage.db import Database

NODE_LENGTH = 16
_NODE_CHARS = re.compile(r"[^A-Za-z0-9-]+")


def node_name(configured: str = "") -> str:
    """This node's name in queue ids, log lines and records: ``NODE`` when set, else the host name's
    first label.  Letters, digits and ``-`` only, at most :data:`NODE_LENGTH` characters.
    """
    raw = configured or socket.gethostname().split(".")[0]
    return _NODE_CHARS.sub("", raw)[:NODE_LENGTH].strip("-") or "node"


@dataclass(frozen=True)
class Settings:
    """Global settings from the config file, checked once and passed in."""

    state_dir: str
    smtp_server: tuple[str, int] | Delivery | None = None
    """``SMTP_SERVER``: where accepted mail goes, ``('host', port)`` or a delivery
    (``smtp_relay(...)``, ``local_maildir(...)``); None when the config names none."""
    release_hop: tuple[str, int] | Delivery | None = None
    """Where a release from the quarantine goes: ``SMTP_SERVER``, else the services' own next hop
    when they have one and the same (the quick start's ``local_maildir('mail')``); else None."""
    spool_threshold: int = 1024 * 1024
    hostname: str = field(default_factory=lambda: socket.getfqdn())
    """This host's name (notifications, the smtpd greeting): looked up when the settings are made
    (:func:`mailsift.config.load`), not at import."""
    hooks: tuple[Hook, ...] = ()
    """``HOOKS``: :class:`mailsift.core.hooks.Hook` objects run after each disposition."""
    database: Database | None = None
    """``DATABASE``: the :class:`mailsift.storage.db.Database` for the quarantine index, logs,
    policies and lists (``db.sqlite()`` in the state directory unless the config says)."""
    quarantine_store: str = "files"
    """``QUARANTINE_STORE``: where quarantined messages are kept: ``"files"`` (Maildir folders under
    STATE_DIR/quarantine, one node) or ``"database"`` (in ``DATABASE``, for gateways sharing one
    PostgreSQL: :mod:`mailsift.storage.quarantine.dbstore`)."""
    node: str = ""
    """``NODE``: this machine's name in queue ids and records (default: the host name's first label;
    :attr:`node_name`)."""
    config_fingerprint: str = ""
    """What config this node runs: :func:`mailsift.config.fingerprint` of the loaded file ('' for a bare Settings)."""
    message_timeout: float = 540.0
    """``MESSAGE_TIMEOUT``: seconds for the scanning, database work and disposition of one message
    together, past which the MTA gets 451 (:mod:`mailsift.core.deadline`); below Postfix's
    ``smtp_data_done_timeout`` and ``milter_content_timeout`` (both 600 s by default)."""
    user: str | None = None
    """``USER``: the unprivileged user the workers (and the CLI commands that write state) run as
    when mailsift is started as root (:mod:`mailsift.supervisor`); None keeps the current user.
    A loaded config has ``"mailsift"`` unless it says otherwise (or ``MAILSIFT_USER`` is set in the
    environment: empty means None); a bare ``Settings`` (tests) has None."""
    maillog_retention: float | None = 90 * 86400.0
    """``MAILLOG_RETENTION``: seconds ``quarantine expire`` and ``stats prune`` keep the per-message log (``maillog``,
    tracking and the digest read it): ``'90d'`` by default; None keeps it forever."""
    poison: poison | None = None
    """``POISON``: :class:`mailsift.core.poison.poison`, mail that fails on its content is quarantined
    after ``max_attempts`` (a loaded config has ``poison()`` unless it says ``POISON = None``)."""

    def require_database(self) -> Database:
        """``DATABASE``; a ConfigError if these settings have none (a loaded config always has one)."""
        if self.database is None:
            raise ConfigError("no DATABASE: the config loader sets one (db.sqlite() in STATE_DIR by default)")
        return self.database

    @property
    def node_name(self) -> str:
        """``NODE`` as every record names this node (:func:`node_name`)."""
        return node_name(self.node)

    @property
    def quarantine_dir(self) -> str:
        return f"{self.state_dir}/quarantine"

    @property
    def spool_dir(self) -> str:
        return f"{self.state_dir}/spool"


@runtime_checkable
class SettingsBound(Protocol):
    """A config object that takes what the accepted config provides (its ``DATABASE``...).

    :func:`mailsift.config.load` calls :meth:`bind_settings` on every scanner
    (through ``children``), hook, service and daemon of a config that has it,
    as the very last step, once every check has passed: a config that is
    rejected binds nothing.  ``bind_settings`` must not fail (checks belong in
    ``check``).
    """

    def bind_settings(self, settings: Settings) -> None: ...
