"""Per-client policy: which scanners run for which clients, and clients never rejected.

qmail's ``tcp.smtp`` turned scanning on or off per client network (simscan,
qmail-scanner); qmail-scanner's st patch added ``SA_ONLYDELETE_HOST``: spam
from a secondary MX is deleted instead of rejected (rejecting there makes the
other MX bounce to a forged sender), and mail from localhost is never rejected.

* ``client_network(networks, *scanners, invert=False)`` runs its scanners only
  for clients in ``networks`` (or only for the others, with ``invert``);
  for everyone else it is clean.  Several of them give per-network scanner
  sets.
* ``trusted_clients(networks, *scanners, quarantine=None)`` runs its scanners
  for everyone, but for clients in ``networks`` a detection that would be
  rejected is dropped instead (``quarantine='spam'``: kept in that quarantine
  category and accepted).  Put it outermost: the outermost action wins.

"The client" is the original SMTP client: the XFORWARD ``ADDR`` Postfix
passes to ``smtpd``, the milter's connect address, qmail's ``TCPREMOTEIP``.
Behind Postfix without ``smtp_send_xforward_command = yes`` it is Postfix
itself (127.0.0.1), so enable XFORWARD before listing localhost here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailsift import validators
from mailsift.errors import ConfigError
from mailsift.message.result import Disposition, QuarantineCopy, Result, SetDisposition
from mailsift.scanners.actions import CATEGORY
from mailsift.scanners.base import Interscanner, Target
from mailsift.validators import Network


def client_in(target: Target, networks: Sequence[Network]) -> bool:
    """Whether the message's original client address is in one of ``networks`` (unknown: in none)."""
    return validators.address_in(target.mail.envelope.client_address, networks)


def _networks_text(networks: Sequence[Network]) -> str:
    return ", ".join(str(n) for n in networks)


class client_network(Interscanner):
    """Run the scanners only for clients in ``networks``: ``client_network('192.168.2.0/24', clamd(...))``.

    With ``invert=True``, only for clients *not* in them.  Elsewhere the
    result is clean (level 0), so the next entry of ``SCANNERS`` decides.
    """

    name = "client_network"

    def __init__(self, networks: Any, *scanners: Any, invert: bool = False) -> None:
        self.networks = validators.networks(networks, f"{self.name}: networks", empty=False)
        self.invert = bool(invert)
        super().__init__(*scanners)

    def describe(self) -> str:
        return f"client_network({'not ' if self.invert else ''}{_networks_text(self.networks)})"

    async def scan(self, target: Target) -> Result:
        if client_in(target, self.networks) == self.invert:
            return Result(0.0, "", self.name, f"not run for client {target.mail.envelope.client_address or '?'}")
        return await self.inner(target)


def _would_reject(result: Result) -> bool:
    """Whether the decision on ``result`` would be a reject (as Decision.from_results decides)."""
    if not result.detected:
        return False
    chosen = None
    for action in result.actions:
        if isinstance(action, SetDisposition):
            chosen = action
    return chosen is None or chosen.disposition is Disposition.REJECT


class trusted_clients(Interscanner):
    """Never reject mail from ``networks`` (localhost, secondary MXes): drop it, or quarantine it.

    ``trusted_clients(['127.0.0.0/8', '192.0.2.25'], reject(SPAM))`` rejects spam
    from anywhere else and deletes it when it comes through the secondary MX
    192.0.2.25 (qmail-scanner's ``SA_ONLYDELETE_HOST``).  With
    ``quarantine='spam'`` the message is kept in that category and accepted.
    """

    name = "trusted_clients"

    def __init__(self, networks: Any, *scanners: Any, quarantine: str | None = None) -> None:
        self.networks = validators.networks(networks, f"{self.name}: networks", empty=False)
        if quarantine is not None and (not isinstance(quarantine, str) or not CATEGORY.match(quarantine)):
            raise ConfigError(f"{self.name}: quarantine must be a category name like 'spam', got {quarantine!r}")
        self.category = quarantine
        super().__init__(*scanners)

    def describe(self) -> str:
        instead = f"quarantine {self.category!r}" if self.category else "drop"
        return f"trusted_clients({_networks_text(self.networks)}: {instead} instead of reject)"

    async def scan(self, target: Target) -> Result:
        result = await self.inner(target)
        if not (_would_reject(result) and client_in(target, self.networks)):
            return result
        client = target.mail.envelope.client_address
        if self.category is None:
            note = f"client {client} is trusted: deleted instead of rejected"
            actions: tuple[QuarantineCopy | SetDisposition, ...] = (SetDisposition(Disposition.DROP),)
        else:
            note = f"client {client} is trusted: quarantined ({self.category}) instead of rejected"
            actions = (QuarantineCopy(self.category), SetDisposition(Disposition.QUARANTINE))
        detail = f"{result.detail}; {note}" if result.detail else note
        return Result(result.level, result.name, result.scanner, detail, result.actions + actions)
