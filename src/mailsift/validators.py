"""Config value checks shared by every configurable object: one rule and one wording each.

A config file builds scanners, services and hooks by calling them; each checks
its arguments when it is built and raises :class:`~mailsift.errors.ConfigError`
naming the option (``what`` is ``"<object>: <option>"``, e.g.
``"clamd: timeout"``).  The rules are the same everywhere:

* a ``bool`` is never a number (``True`` is not ``1`` second or ``1``
  connection), and neither is a string (``"300"``);
* numbers are finite (no ``nan``, no ``inf``);
* a flag is ``True`` or ``False``, nothing else that is merely truthy;
* a network list (:func:`networks`) holds CIDR networks or single addresses,
  IPv4 or IPv6, and an address is matched against it by :func:`address_in`
  (IPv4-mapped IPv6 addresses included).

This module sits in the bottom layers: it imports only :mod:`mailsift.errors`,
so every package may use it.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Sequence
from typing import Any

from mailsift.errors import ConfigError


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: for checks that keep their own wording."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_port(value: Any) -> bool:
    """A TCP/UDP port to connect to: an int 1-65535, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" {minimum:g}-{maximum:g}"
    if minimum is not None:
        return f" >= {minimum:g}"
    if maximum is not None:
        return f" <= {maximum:g}"
    return ""


def _check_range(value: float, what: str, unit: str, minimum: float | None, maximum: float | None) -> None:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{what} must be {unit}{_bounds(minimum, maximum)}, got {value!r}")


def number(
    value: Any, what: str, *, minimum: float | None = None, maximum: float | None = None, unit: str = "a number"
) -> float:
    """A finite number (int or float, not bool) within the bounds, as a float."""
    if not is_number(value):
        raise ConfigError(f"{what} must be {unit}{_bounds(minimum, maximum)}, got {value!r}")
    _check_range(value, what, unit, minimum, maximum)
    return float(value)


def optional_number(
    value: Any, what: str, *, minimum: float | None = None, maximum: float | None = None, unit: str = "a number"
) -> float | None:
    """:func:`number`, or ``None`` when the option is not set."""
    if value is None:
        return None
    return number(value, what, minimum=minimum, maximum=maximum, unit=f"{unit} or None")


def integer(
    value: Any, what: str, *, minimum: int | None = None, maximum: int | None = None, unit: str = "an integer"
) -> int:
    """A whole number (not bool, not a float) within the bounds."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be {unit}{_bounds(minimum, maximum)}, got {value!r}")
    _check_range(value, what, unit, minimum, maximum)
    return value


def positive(value: Any, what: str, *, unit: str = "number") -> float:
    """A finite number above zero, as a float (``unit``: ``"number of seconds"``...)."""
    if not is_number(value) or not value > 0:
        raise ConfigError(f"{what} must be a positive {unit}, got {value!r}")
    return float(value)


def positive_int(value: Any, what: str, *, unit: str = "integer") -> int:
    """A whole number above zero (``unit``: ``"number of bytes"``...)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what} must be a positive {unit}, got {value!r}")
    return value


def non_negative(value: Any, what: str) -> float:
    """A finite number, zero or more, as a float."""
    if not is_number(value):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    return float(value)


def non_negative_int(value: Any, what: str) -> int:
    """A whole number, zero or more."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    return value


def flag(value: Any, what: str) -> bool:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be True or False, got {value!r}")
    return value


def permission_bits(value: Any, what: str, *, unit: str = "permission bits like 0o660") -> int:
    """Unix permission bits (a socket's mode, a umask): an int 0-0o777, not a bool."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ConfigError(f"{what} must be {unit}, got {value!r}")
    return value


def choice(value: Any, what: str, choices: Collection[str]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(value: Any, what: str, *, single: bool = True, empty: bool = True) -> tuple[Network, ...]:
    """A network list option (``relay_clients``, ``exempt_hosts``, ``trusted_proxies``...) as networks.

    ``value`` is a sequence (or set) of strings, each a network (``'192.0.2.0/24'``,
    ``'2001:db8::/32'``; host bits may be set: ``'192.0.2.7/24'`` is ``192.0.2.0/24``)
    or a single address (``'192.0.2.7'``, ``'::1'``); with ``single``, also one such
    string alone.  ``empty=False`` refuses an empty list.  ``what`` is
    ``"<object>: <option>"``; a bad entry is named:
    ``"sgfilterd: bad client_hosts: bad network 'x' (not a network or address ...)"``.
    """
    shape = "a network like '192.0.2.0/24' or a list of them" if single else "a list of networks like ['192.0.2.0/24']"
    entries = (value,) if single and isinstance(value, str) else value
    if (
        isinstance(entries, str | bytes)
        or not isinstance(entries, Sequence | set | frozenset)
        or not all(isinstance(entry, str) for entry in entries)
        or not (empty or entries)
    ):
        raise ConfigError(f"{what} must be {shape}, got {value!r}")
    parsed: list[Network] = []
    for entry in entries:
        try:
            parsed.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            owner, _, option = what.rpartition(": ")
            bad = f"{owner}: bad {option}" if owner else f"bad {option}"
            raise ConfigError(
                f"{bad}: bad network {entry!r} (not a network or address like '192.0.2.0/24' or '::1')"
            ) from None
    return tuple(parsed)


def ip_address(text: str) -> Address | None:
    """The IP address a client address text names, or ``None`` (empty, ``[UNAVAILABLE]``, a name).

    Surrounding blanks, ``[...]`` and an SMTP ``IPv6:`` tag are dropped:
    ``' 192.0.2.7 '``, ``'[::1]'``, ``'[IPv6:2001:db8::1]'``.
    """
    text = text.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address_in(address: str | Address, networks: Collection[Network]) -> bool:
    """Whether ``address`` (text as :func:`ip_address` reads it, or an address) is in one of ``networks``.

    A bad or empty address is in none.  An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``,
    how a dual-stack socket shows an IPv4 peer) is also its IPv4 address: it is in
    ``192.0.2.0/24`` (and still in ``::ffff:0:0/96``).
    """
    ip = ip_address(address) if isinstance(address, str) else address
    if ip is None:
        return False
    candidates: tuple[Address, ...] = (ip,)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates = (ip, ip.ipv4_mapped)
    return any(
        candidate.version == network.version and candidate in network
        for candidate in candidates
        for network in networks
    )


_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character escaped, for a log line or a terminal.

    CR, LF and TAB become ``\\r``, ``\\n``, ``\\t``; every other character that
    is not printable (C0, DEL, C1 such as the CSI ``\\x9b``, ESC, Unicode line
    and paragraph separators, bidi and other format characters, undecodable
    bytes kept as surrogates) becomes ``\\xNN``/``\\uNNNN``.  A value from the
    outside (an address, an XFORWARD attribute, a Subject, a file name, a
    milter macro) can then neither start a second log line nor send an
    escape sequence to the terminal of whoever reads the log.  The one place
    for it: the log writers (:mod:`mailsift.reporting.logline`), the front
    ends (XFORWARD, milter macros) and the command line all use it.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _ESCAPES.get(ch) or _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
