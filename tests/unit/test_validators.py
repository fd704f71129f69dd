"""``mailsift.validators``: the config value checks every package shares."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from mailsift import (
    clamd_daemon,
    client_network,
    const,
    db,
    icap,
    lmtp_relay,
    log_file,
    log_sql,
    log_syslog,
    max_file_size,
    milter,
    notify,
    office_macros,
    reporter,
    sgfilterd,
    smtp_relay,
    smtpd,
    smtpd_policy,
    spam_forward,
    spamd_daemon,
    stats,
    trusted_clients,
    validators,
    webq,
)
from mailsift.delivery.next_hop import resolve
from mailsift.errors import ConfigError
from mailsift.scanners.engines.common import parse_address
from mailsift.scanners.engines.spamlevels import spam_levels
from mailsift.web import auth


@pytest.mark.parametrize("bad", [True, False, "1", None, float("nan"), float("inf"), 0, -1, 0.0])
def test_positive_refuses_bools_strings_non_finite_and_non_positive(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"^x: t must be a positive number of seconds, got "):
        validators.positive(bad, "x: t", unit="number of seconds")


def test_positive_accepts_and_converts() -> None:
    assert validators.positive(2, "x") == 2.0
    assert isinstance(validators.positive(2, "x"), float)
    assert validators.positive(0.5, "x") == 0.5


@pytest.mark.parametrize("bad", [True, 1.0, "3", 0, -2])
def test_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigError, match="x must be a positive integer"):
        validators.positive_int(bad, "x")
    assert validators.positive_int(3, "x") == 3


def test_number_and_integer_bounds() -> None:
    assert validators.number(0, "m", minimum=0, unit="a number of seconds") == 0.0
    with pytest.raises(ConfigError, match=r"m must be a number of seconds >= 1, got 0"):
        validators.number(0, "m", minimum=1, unit="a number of seconds")
    with pytest.raises(ConfigError, match="m must be a number"):
        validators.number(float("nan"), "m")
    with pytest.raises(ConfigError, match="p must be an integer 0-32, got 33"):
        validators.integer(33, "p", minimum=0, maximum=32)
    with pytest.raises(ConfigError, match="p must be an integer 0-32, got True"):
        validators.integer(True, "p", minimum=0, maximum=32)
    assert validators.optional_number(None, "o") is None
    with pytest.raises(ConfigError, match="o must be a number or None"):
        validators.optional_number("1", "o")


def test_non_negative_flag_choice() -> None:
    assert validators.non_negative_int(0, "d") == 0
    with pytest.raises(ConfigError, match="d must not be negative"):
        validators.non_negative_int(-1, "d")
    with pytest.raises(ConfigError, match="d must be a whole number"):
        validators.non_negative_int(1.5, "d")
    with pytest.raises(ConfigError, match="r must be a number"):
        validators.non_negative("high", "r")
    assert validators.flag(False, "f") is False
    with pytest.raises(ConfigError, match="f must be True or False, got 1"):
        validators.flag(1, "f")
    assert validators.choice("a", "c", ("a", "b")) == "a"
    with pytest.raises(ConfigError, match="c must be one of 'a', 'b', got 'z'"):
        validators.choice("z", "c", ("a", "b"))


def test_is_number_is_port_permission_bits() -> None:
    assert validators.is_number(3)
    assert validators.is_number(0.5)
    assert not any(validators.is_number(v) for v in (True, "3", float("nan"), float("inf"), None))
    assert validators.is_port(25)
    assert validators.is_port(65535)
    assert not any(validators.is_port(v) for v in (True, 0, 65536, "25", 25.0))
    assert validators.permission_bits(0o660, "m") == 0o660
    with pytest.raises(ConfigError, match="m must be permission bits like 0o660, got 512"):
        validators.permission_bits(0o1000, "m")
    with pytest.raises(ConfigError, match="u must be an integer like 0o117, got True"):
        validators.permission_bits(True, "u", unit="an integer like 0o117")


# --------------------------------------------------------------------------- network lists


def test_networks_reads_cidr_and_single_addresses_of_both_families() -> None:
    parsed = validators.networks(["192.0.2.0/24", "198.51.100.7", "2001:db8::/32", "::1", " 10.1.2.3/8 "], "x: y")
    assert [str(n) for n in parsed] == ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32", "::1/128", "10.0.0.0/8"]
    assert validators.networks("192.0.2.7/24", "x: y") == validators.networks(["192.0.2.0/24"], "x: y")  # one string
    assert validators.networks((), "x: y") == ()
    assert validators.networks(frozenset({"::1"}), "x: y") == validators.networks(["::1"], "x: y")


@pytest.mark.parametrize("bad", [True, 5, None, b"10.0.0.0/8", [True], ["10.0.0.0/8", 5], {"a": 1}])
def test_networks_refuses_what_is_not_strings(bad: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        validators.networks(bad, "smtpd: exempt_hosts")
    assert raised.value.message == (
        f"smtpd: exempt_hosts must be a network like '192.0.2.0/24' or a list of them, got {bad!r}"
    )


def test_networks_single_and_empty_switches() -> None:
    with pytest.raises(ConfigError, match=r"^smtpd: exempt_hosts must be a list of networks like \['192"):
        validators.networks("127.0.0.1", "smtpd: exempt_hosts", single=False)  # a lone string is refused
    assert validators.networks(["127.0.0.1"], "smtpd: exempt_hosts", single=False)
    with pytest.raises(ConfigError, match=r"^client_network: networks must be a network like .*, got \[\]$"):
        validators.networks([], "client_network: networks", empty=False)


@pytest.mark.parametrize("entry", ["not a network", "300.1.1.1", "10.0.0.0/33", "2001:db8::/129", "", "host.example"])
def test_networks_names_the_setting_and_the_bad_entry(entry: str) -> None:
    with pytest.raises(ConfigError) as raised:
        validators.networks(["10.0.0.0/8", entry], "sgfilterd: client_hosts")
    assert raised.value.message == (
        f"sgfilterd: bad client_hosts: bad network {entry!r} (not a network or address like '192.0.2.0/24' or '::1')"
    )


NETS = validators.networks(["192.0.2.0/24", "2001:db8::/32", "::1"], "x: y")


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("192.0.2.1", True),
        ("192.0.3.1", False),
        ("::ffff:192.0.2.1", True),  # IPv4-mapped: how a dual-stack listener shows an IPv4 peer
        ("::ffff:c000:201", True),  # the same, written in hex
        ("[::ffff:192.0.2.1]", True),
        ("::ffff:192.0.3.1", False),
        ("2001:db8::25", True),
        ("[IPv6:2001:db8::25]", True),  # an SMTP address literal
        ("ipv6:2001:db8::25", True),
        ("2001:db9::1", False),
        ("::1", True),
        (" [::1] ", True),
        ("fe80::1%eth0", False),
        ("::c000:201", False),  # IPv4-compatible (deprecated) is not IPv4-mapped
        ("", False),
        ("[UNAVAILABLE]", False),
        ("unknown", False),
        ("192.0.2.1:25", False),
        ("192.0.2.300", False),
    ],
)
def test_address_in(address: str, inside: bool) -> None:
    assert validators.address_in(address, NETS) is inside


def test_address_in_mapped_networks_and_address_objects() -> None:
    mapped = validators.networks(["::ffff:192.0.2.0/120"], "x: y")  # a network written IPv4-mapped
    assert validators.address_in("::ffff:192.0.2.9", mapped)
    assert not validators.address_in("192.0.2.9", mapped)  # an IPv4 address is not an IPv6 one
    assert not validators.address_in("192.0.2.9", validators.networks(["::/0"], "x: y"))
    assert validators.address_in(ipaddress.ip_address("::ffff:192.0.2.9"), NETS)
    assert not validators.address_in("192.0.2.9", ())
    assert validators.ip_address("[IPv6:::1]") == ipaddress.ip_address("::1")
    assert validators.ip_address("nonsense") is None


def test_every_network_list_site_matches_ipv4_mapped_clients() -> None:
    """The front ends' host lists, the web's trusted proxies and the relay flag all used ``ip in network``,
    where ``::ffff:192.0.2.9`` is in no IPv4 network (only scanners/client.py mapped it)."""
    front = smtpd([], "127.0.0.1", 10024, next_hop=HOP, exempt_hosts=["192.0.2.0/24"], max_connections_per_address=5)
    assert not front.limits_address("::ffff:192.0.2.9")
    assert front.limits_address("::ffff:198.51.100.9")
    assert auth.in_networks("::ffff:192.0.2.9", ("192.0.2.0/24",))
    assert not auth.in_networks("::ffff:198.51.100.9", ("192.0.2.0/24",))
    service = icap([], "127.0.0.1", 1344, clients=["192.0.2.0/24"])
    assert service.client_allowed("::ffff:192.0.2.9")
    assert not service.client_allowed("::ffff:198.51.100.9")
    assert not service.client_allowed("not an address")


BAD_ENTRY = "bad network 'nonsense' (not a network or address like '192.0.2.0/24' or '::1')"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: log_sql(relay_clients=["nonsense"]), f"log_sql: bad relay_clients: {BAD_ENTRY}"),
        (lambda: log_file("x.log", relay_clients="nonsense"), f"log_file: bad relay_clients: {BAD_ENTRY}"),
        (
            lambda: smtpd([], "127.0.0.1", 10024, next_hop=HOP, exempt_hosts=["nonsense"]),
            f"smtpd: bad exempt_hosts: {BAD_ENTRY}",
        ),
        (
            lambda: smtpd([], "127.0.0.1", 10024, next_hop=HOP, xforward_hosts=["nonsense"]),
            f"smtpd: bad xforward_hosts: {BAD_ENTRY}",
        ),
        (
            lambda: smtpd([], "127.0.0.1", 10024, next_hop=HOP, xforward_hosts="10"),  # was ('0.0.0.1', '0.0.0.0')
            "smtpd: xforward_hosts must be a list of networks like ['192.0.2.0/24'], got '10'",
        ),
        (
            lambda: sgfilterd([], "127.0.0.1", 27, client_hosts=["nonsense"]),
            f"sgfilterd: bad client_hosts: {BAD_ENTRY}",
        ),
        (lambda: webq(trusted_proxies=["nonsense"]), f"webq: bad trusted_proxies: {BAD_ENTRY}"),
        (lambda: webq(metrics_clients=["nonsense"]), f"webq: bad metrics_clients: {BAD_ENTRY}"),
        (
            lambda: webq(metrics_clients="127.0.0.1"),  # was the characters '1', '2', '7', '.'...
            "webq: metrics_clients must be a list of networks like ['192.0.2.0/24'], got '127.0.0.1'",
        ),
        (lambda: client_network("nonsense", const(1.0)), f"client_network: bad networks: {BAD_ENTRY}"),
        (lambda: trusted_clients(["nonsense"], const(1.0)), f"trusted_clients: bad networks: {BAD_ENTRY}"),
        (lambda: spam_levels(const(1.0), trusted=["nonsense"]), f"spam_levels: bad trusted: {BAD_ENTRY}"),
    ],
    ids=[
        "log_sql",
        "log_file",
        "smtpd-exempt_hosts",
        "smtpd-xforward_hosts",
        "smtpd-xforward_hosts-string",
        "sgfilterd-client_hosts",
        "webq-trusted_proxies",
        "webq-metrics_clients",
        "webq-metrics_clients-string",
        "client_network",
        "trusted_clients",
        "spam_levels-trusted",
    ],
)
def test_every_network_list_site_uses_the_shared_parser(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build()
    assert raised.value.message == message


# --------------------------------------------------------------------------- every config site uses them

NAN, INF = float("nan"), float("inf")
HOP = ("127.0.0.1", 10025)
SECONDS = "must be a positive number of seconds, got"

SITES: list[tuple[Callable[[], object], str]] = [
    # (build, message): each config site that checks a number, a port or a flag, with a value only the shared
    # check refuses (True, a string, nan, inf), and the start of the shared message
    # reporting/logline.py
    (lambda: log_syslog(timeout=True), f"log_syslog: timeout {SECONDS} True"),
    (lambda: log_syslog(timeout=NAN), f"log_syslog: timeout {SECONDS} nan"),
    (lambda: log_syslog(address=("127.0.0.1", True)), "log_syslog: address must be a socket path or"),
    (lambda: log_file("x.log", json=1), "log_file: json must be True or False, got 1"),
    (lambda: log_sql(max_pending=True), "log_sql: max_pending must be a positive integer, got True"),
    (lambda: log_sql(close_timeout="10"), f"log_sql: close_timeout {SECONDS} '10'"),
    # reporting/counters.py
    (lambda: stats(flush_interval=INF), f"stats: flush_interval {SECONDS} inf"),
    (lambda: stats(close_timeout=INF), f"stats: close_timeout {SECONDS} inf"),
    (lambda: stats(max_keys=True), "stats: max_keys must be a positive integer, got True"),
    # reporting/digest.py
    (lambda: reporter(max_entries=True), "reporter: max_entries must be a positive integer, got True"),
    (lambda: reporter(link_lifetime=True), "reporter: link_lifetime must be like '7d', got True"),
    # reporting/spam_forward.py, reporting/notifications.py
    (lambda: spam_forward("a@example.test", verbose=1), "spam_forward: verbose must be True or False, got 1"),
    (lambda: notify(timeout=True), f"notify: timeout {SECONDS} True"),
    # services/base.py (the skeleton of every front end), services/milter.py, services/daemons.py
    (lambda: smtpd([], "127.0.0.1", 10024, next_hop=HOP, timeout=INF), f"smtpd: timeout {SECONDS} inf"),
    (lambda: sgfilterd([], "127.0.0.1", 27, timeout=INF), f"sgfilterd: timeout {SECONDS} inf"),
    (
        lambda: smtpd_policy([], db.sqlite(), "127.0.0.1", 10031, idle_timeout=INF),
        f"smtpd_policy: idle_timeout {SECONDS} inf",
    ),
    (
        lambda: smtpd([], "127.0.0.1", 10024, next_hop=HOP, max_size=True),
        "smtpd: max_size must be an integer >= 1024, got True",
    ),
    (lambda: smtpd([], "127.0.0.1", True, next_hop=HOP), "smtpd: port must be an integer 0-65535, got True"),
    (
        lambda: smtpd([], "unix:/tmp/x.sock", 0, next_hop=HOP, socket_mode=True),
        "smtpd: socket_mode must be permission bits like 0o660, got True",
    ),
    (
        lambda: milter([], "m", "inet:0@127.0.0.1", umask=True),
        "milter: umask must be an integer like 0o117, got True",
    ),
    (lambda: spamd_daemon(("127.0.0.1", True)), "spamd_daemon: address must be"),
    (lambda: spamd_daemon(max_children=True), "spamd_daemon: max_children must be a positive integer, got True"),
    (lambda: clamd_daemon("/tmp/c.sock", max_threads="10"), "clamd_daemon: max_threads must be a positive integer"),
    # web/service.py
    (lambda: webq(session_hours=INF), "webq: session_hours must be a positive number, got inf"),
    (lambda: webq(idle_minutes=NAN), "webq: idle_minutes must be a positive number, got nan"),
    # storage/db.py
    (lambda: db.sqlite(busy_timeout=True), f"database: busy_timeout {SECONDS} True"),
    (lambda: db.database("sqlite://", busy_timeout=INF), f"database: busy_timeout {SECONDS} inf"),
    # delivery/next_hop.py
    (lambda: resolve(("127.0.0.1", True), ""), "next hop must be"),
    (lambda: smtp_relay("127.0.0.1", 25, timeout="60"), f"smtp_relay: timeout {SECONDS} '60'"),
    (lambda: lmtp_relay("127.0.0.1", 24, timeout=INF), f"lmtp_relay: timeout {SECONDS} inf"),
    # scanners/basic.py, scanners/office.py, scanners/engines/common.py
    (lambda: const("1"), "const: level must be a number, got '1'"),
    (lambda: const(True), "const: level must be a number, got True"),
    (lambda: max_file_size(True), "max_file_size: size must be a whole number, got True"),
    (lambda: office_macros(unscannable=True), "office_macros: unscannable must be a level, got True"),
    (lambda: office_macros(unscannable="1"), "office_macros: unscannable must be a level, got '1'"),
    (lambda: parse_address(("localhost", True), "engine"), "engine: address must be"),
]


@pytest.mark.parametrize(("build", "message"), SITES, ids=[message.split(" must")[0] for _, message in SITES])
def test_every_config_site_uses_the_shared_check(build: Callable[[], object], message: str) -> None:
    """Each site checked on its own before; a bool, a string, nan or inf now gets the shared refusal."""
    with pytest.raises(ConfigError) as raised:
        build()
    assert raised.value.message.startswith(message), raised.value.message


def test_spool_threshold_uses_the_shared_integer_check(tmp_path: Any) -> None:
    from mailsift import config

    path = tmp_path / "mailsift.conf.py"
    path.write_text("SPOOL_THRESHOLD = True\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        config.load(str(path))
    assert raised.value.message == "SPOOL_THRESHOLD must be a number of bytes >= 0, got True"
