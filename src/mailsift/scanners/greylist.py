"""Policy scanners: verdicts on an SMTP transaction before any data, for ``smtpd_policy``.

Their target is a :class:`PolicyTarget`: a :class:`~mailsift.message.mail.Mail` with
an envelope built from the Postfix policy request (one recipient, no data), the
request's attributes, and the service's database.  So envelope scanners such
as ``sender_regexp`` and the operator algebra work unchanged, and the actions
map onto policy answers (see :mod:`mailsift.services.postfix_policy`)::

    deliver(client_network('10.0.0.0/8', const(1.0, 'Trusted')))  # allow list: DUNNO, never greylisted
    reject(sender_regexp([('Spammer', r'@spam\\.example$')]))      # deny list: REJECT
    greylist(min=300, auto_whitelist=5, url='https://mail.example.com/greylisting.html')

``greylist`` keys its state by (client network, sender, recipient): the
network is the client's /24 (IPv4) or /64 (IPv6), so a sender's pool of
outgoing servers counts as one client.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mailsift.errors import ConfigError, ScannerError
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import AddHeader, Disposition, Result, SetDisposition
from mailsift.scanners.base import MailTarget, Scanner, Target
from mailsift.scanners.basic import compile_text
from mailsift.storage.db import Database, GreylistRules, GreylistState, greylist_purge, greylist_request
from mailsift.validators import integer, number

# --------------------------------------------------------------------------- target


class PolicyTarget(MailTarget):
    """One policy request (Postfix ``check_policy_service``) as a scan target."""

    def __init__(self, request: Mapping[str, str], database: Database | None = None) -> None:
        recipient = request.get("recipient", "")
        envelope = Envelope(
            sender=request.get("sender", ""),
            recipients=[recipient] if recipient else [],
            client_address=request.get("client_address", ""),
            client_name=request.get("client_name", ""),
            helo=request.get("helo_name", ""),
            queue_id=request.get("queue_id", ""),
            protocol=request.get("protocol_name", "SMTP"),
        )
        super().__init__(Mail(envelope, b""))
        self.request = dict(request)
        self.database = database

    @property
    def recipient(self) -> str:
        return self.request.get("recipient", "")


def network_key(address: str, ipv4_prefix: int = 24, ipv6_prefix: int = 64) -> str:
    """The client network a greylist entry is kept for: ``192.0.2.0/24``, ``2001:db8::/64``.

    An IPv4-mapped IPv6 address counts as IPv4; anything that is not an
    address (Postfix's ``unknown``) is kept as it is, lower-cased.
    """
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip().lower()[:255]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


_BATV = re.compile(r"^(?:prvs|btv1|msprvs\d*)=[^=@]+=", re.IGNORECASE)


def sender_key(sender: str) -> str:
    """The sender as greylisting sees it: lower-cased, extension and tags stripped.

    Mailing lists and bounce tags vary the local part per message
    (``list-bounces+123-alice=example.com@``, ``prvs=4711abcd=bob@``); as in
    postgrey, BATV tags and ``+extensions`` are removed and digit runs become
    ``#``, so such a sender is greylisted once, not on every message.
    """
    sender = sender.strip().lower()[:320]
    local, at, domain = sender.rpartition("@")
    if not at:
        return sender
    local = _BATV.sub("", local).split("+", 1)[0]
    return f"{re.sub(r'[0-9]+', '#', local)}@{domain}"


# --------------------------------------------------------------------------- scanners


class recipient_regexp(Scanner):
    """Detect by a recipient: ``recipient_regexp([('Postmaster', r'^postmaster@')])``.

    Like ``sender_regexp``: every pattern of a rule must match; under
    ``smtpd_policy`` the request's one recipient is checked, elsewhere any
    recipient of the envelope.
    """

    name = "recipient_regexp"

    def __init__(self, rules: Sequence[Any], flags: int = re.IGNORECASE) -> None:
        if isinstance(rules, dict):
            rules = list(rules.items())
        if not isinstance(rules, list | tuple) or not rules:
            raise ConfigError(f"recipient_regexp: expected a non-empty list of (name, pattern), got {rules!r}")
        self.rules: list[tuple[str, list[re.Pattern[str]]]] = []
        for rule in rules:
            if not isinstance(rule, list | tuple) or len(rule) < 2 or not isinstance(rule[0], str):
                raise ConfigError(f"recipient_regexp: each rule must be (name, pattern, ...), got {rule!r}")
            self.rules.append((rule[0], [compile_text(p, self.name, flags) for p in rule[1:]]))

    def describe(self) -> str:
        return f"recipient_regexp([{', '.join(name for name, _ in self.rules)}])"

    async def scan(self, target: Target) -> Result:
        for recipient in target.mail.envelope.recipients:
            for name, patterns in self.rules:
                if all(p.search(recipient) for p in patterns):
                    return Result(1.0, name, self.name, f"recipient <{recipient}>")
        return Result(0.0, "", self.name)


class greylist(Scanner):
    """Greylisting: defer the first attempt of an unknown (network, sender, recipient).

    ``min`` seconds after its first sighting, a retry passes; a triplet that
    never passed starts over after ``expire`` seconds, one that passed after
    ``max_age`` seconds without use.  After ``auto_whitelist`` passes from a
    client network, that network passes at once (SAGATOR's auto_whitelist;
    0 turns it off).  The network is the client's ``/ipv4_prefix`` or
    ``/ipv6_prefix``.

    A deferred request is detected as ``Greylisted`` and answered with
    ``text`` (``%s``: seconds still to wait) and, when set, ``url`` (``%r``:
    the recipient's domain).  A request that passed after a delay gets the
    ``header`` (``X-Greylist`` by default; ``None`` for none) prepended.
    Works only under ``smtpd_policy``, whose database keeps the state.
    """

    name = "greylist"

    def __init__(
        self,
        min: float = 300,
        expire: float = 48 * 3600,
        *,
        max_age: float = 35 * 86400,
        auto_whitelist: int = 5,
        url: str = "",
        text: str = "Greylisted, please try again in %s seconds",
        header: str | None = "X-Greylist",
        ipv4_prefix: int = 24,
        ipv6_prefix: int = 64,
        purge_interval: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        delay = number(min, "greylist: min", minimum=0, unit="a number of seconds")
        retry_window = number(expire, "greylist: expire", minimum=1, unit="a number of seconds")
        if retry_window <= delay:
            raise ConfigError(f"greylist: expire ({expire!r}) must be longer than min ({min!r})")
        integer(auto_whitelist, "greylist: auto_whitelist", minimum=0, unit="a number of passes (0: off)")
        for what, value in (("url", url), ("text", text)):
            if not isinstance(value, str) or "\n" in value or "\r" in value:
                raise ConfigError(f"greylist: {what} must be one line of text, got {value!r}")
        if header is not None and (not isinstance(header, str) or not re.fullmatch(r"[!-9;-~]+", header)):
            raise ConfigError(f"greylist: invalid header name {header!r}")
        self.rules = GreylistRules(
            delay,
            retry_window,
            number(max_age, "greylist: max_age", minimum=1, unit="a number of seconds"),
            auto_whitelist,
        )
        self.url, self.text, self.header = url, text, header
        self.ipv4_prefix = integer(ipv4_prefix, "greylist: ipv4_prefix", minimum=0, maximum=32)
        self.ipv6_prefix = integer(ipv6_prefix, "greylist: ipv6_prefix", minimum=0, maximum=128)
        self.purge_interval = number(purge_interval, "greylist: purge_interval", minimum=1, unit="a number of seconds")
        self.clock = clock
        self._next_purge = 0.0

    def describe(self) -> str:
        rules = self.rules
        return f"greylist(min={rules.delay:g}, expire={rules.retry_window:g}, auto_whitelist={rules.auto_whitelist})"

    def defer_text(self, target: PolicyTarget, state: GreylistState, now: float) -> str:
        """The answer's text: ``Greylisted, please try again in 299 seconds, see https://...``."""
        remaining = max(1, int(state.first_seen + self.rules.delay - now + 0.999))
        text = self.text.replace("%s", str(remaining))
        if self.url:
            domain = target.recipient.rpartition("@")[2] or "unknown"
            text = f"{text}, see {self.url.replace('%r', domain)}"
        return text

    async def scan(self, target: Target) -> Result:
        if not isinstance(target, PolicyTarget) or target.database is None:
            raise ScannerError("greylist works only under smtpd_policy (it needs the policy request and database)")
        if not target.recipient:
            return Result(0.0, "", self.name, "no recipient in this request (not at RCPT): not greylisted")
        envelope = target.mail.envelope
        network = network_key(envelope.client_address, self.ipv4_prefix, self.ipv6_prefix)
        triplet = (network, sender_key(envelope.sender), target.recipient.strip().lower()[:320])
        now = self.clock()
        state = await target.database.run(greylist_request, *triplet, now, self.rules)
        if now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            await target.database.run(greylist_purge, now, self.rules)
        if state.whitelisted:
            return Result(0.0, "", self.name, f"network {network} auto-whitelisted ({state.network_passes} passes)")
        if state.passed:
            detail = f"passed (triplet passes {state.passes}, network passes {state.network_passes})"
            result = Result(0.0, "", self.name, detail)
            delayed = now - state.first_seen
            if self.header and state.passes == 1:
                value = f"delayed {int(delayed)} seconds by mailsift greylisting"
                return result.with_actions(AddHeader(self.header, value))
            return result
        text = self.defer_text(target, state, now)
        return Result(
            1.0,
            "Greylisted",
            self.name,
            f"{network} <{envelope.sender}> -> <{target.recipient}>: attempt {state.deferred}",
            (SetDisposition(Disposition.TEMPFAIL, text),),
        )
