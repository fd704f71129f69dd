"""The global settings of a config file (``STATE_DIR``, ``SMTP_SERVER``, ``HOOKS``,
``DATABASE``...), checked once by :mod:`mailsift.config` and passed in everywhere."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Global settings from the config file, checked once and passed in."""

    state_dir: str
    smtp_server: Any = None
    spool_threshold: int = 1024 * 1024
    hostname: str = socket.getfqdn()
    hooks: tuple[Any, ...] = ()
    """``HOOKS``: :class:`mailsift.core.hooks.Hook` objects run after each disposition."""
    database: Any = None
    """``DATABASE``: the :class:`mailsift.storage.db.Database` for the quarantine index, logs,
    policies and lists (``db.sqlite()`` in the state directory unless the config says)."""
    node: str = ""
    """``NODE``: this machine's name in queue ids (default: the host name's first label)."""

    @property
    def quarantine_dir(self) -> str:
        return f"{self.state_dir}/quarantine"

    @property
    def spool_dir(self) -> str:
        return f"{self.state_dir}/spool"
