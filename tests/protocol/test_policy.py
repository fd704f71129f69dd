"""The policy delegation protocol over real sockets: ``smtpd_policy`` in a thread, SQLite on disk.

Requests are written byte for byte as Postfix writes them (``name=value``
lines, an empty line); answers are read up to their empty line.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailsift.scanners.actions import deliver, drop, quarantine, reject
from mailsift.scanners.basic import const, sender_regexp
from mailsift.scanners.client import client_network
from mailsift.scanners.greylist import greylist, recipient_regexp
from mailsift.services.postfix_policy import DEFAULT_ON_ERROR, LINE_LIMIT, MALFORMED, MAX_ATTRIBUTES, smtpd_policy
from mailsift.settings import Settings
from mailsift.storage import db
from mailsift.testing import ServiceThread

URL = "https://mail.example.test/greylisting.html"


def request(sender: str = "alice@sender.example", recipient: str = "bob@example.test", **extra: str) -> bytes:
    """A request as Postfix 3.7 sends it at RCPT (most attributes)."""
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.7",
        "client_name": "mx.sender.example",
        "reverse_client_name": "mx.sender.example",
        "client_port": "40000",
        "helo_name": "mx.sender.example",
        "sender": sender,
        "recipient": recipient,
        "recipient_count": "0",
        "queue_id": "",
        "instance": "1f2.65a3b1c2.8d1e.0",
        "size": "0",
        "etrn_domain": "",
        "stress": "",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "ccert_subject": "",
        "encryption_protocol": "",
        "server_address": "127.0.0.1",
        "server_port": "25",
        "policy_context": "",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
        **extra,
    }
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


class PolicyClient:
    """One connection to the policy service, as Postfix's policy client keeps it."""

    def __init__(self, port: int, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> str:
        """The next answer's action (the whole ``action=...\\n\\n`` block is checked)."""
        while b"\n\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; got {self.buffer!r}")
            self.buffer += chunk
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        assert block.startswith(b"action=")
        assert b"\n" not in block
        return block.decode()[len("action=") :]

    def ask(self, data: bytes | None = None) -> str:
        self.send(data if data is not None else request())
        return self.answer()

    def closed(self) -> bool:
        """True when the server closed the connection (waits up to the socket timeout)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServiceThread]]:
    started: list[ServiceThread] = []

    def start(scanners: list[Any], dbc: db.Database | None = None, **options: Any) -> ServiceThread:
        service = smtpd_policy(scanners, dbc, "127.0.0.1", 0, **options)
        thread = ServiceThread(service, Settings(state_dir=str(tmp_path / "state")))
        started.append(thread.start())
        return thread

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture
def client_of() -> Iterator[Callable[[ServiceThread], PolicyClient]]:
    clients: list[PolicyClient] = []

    def connect(thread: ServiceThread) -> PolicyClient:
        clients.append(PolicyClient(thread.port))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def counts(thread: ServiceThread) -> list[tuple[str, str, str, int, int]]:
    path = Path(thread.settings.state_dir) / "mailsift.db"
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT network, sender, recipient, deferred, passed FROM greylist ORDER BY sender"
        ).fetchall()


# --------------------------------------------------------------------------- answers


def test_first_request_deferred_with_url_then_passes_on_the_same_connection(serve, client_of) -> None:
    thread = serve([greylist(min=0, url=URL)])
    client = client_of(thread)
    assert client.ask() == f"DEFER_IF_PERMIT Greylisted, please try again in 1 seconds, see {URL}"
    assert client.ask() == "PREPEND X-Greylist: delayed 0 seconds by mailsift greylisting"
    assert client.ask() == "DUNNO"
    assert counts(thread) == [("192.0.2.0/24", "alice@sender.example", "bob@example.test", 1, 2)]


def test_a_passed_greylist_is_logged_as_a_greylist_pass(serve, client_of, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 10: the pass was logged ``scanner=client_network ... detail=not run for client ...``."""
    own_networks = client_network("10.0.0.0/8", deliver(const(1.0, "Own.Network")))  # skipped for 192.0.2.7
    client = client_of(serve([own_networks, greylist(min=0)]))
    with caplog.at_level(logging.INFO, logger="mailsift"):
        assert client.ask().startswith("DEFER_IF_PERMIT Greylisted")
        assert client.ask().startswith("PREPEND X-Greylist")
        assert client.ask() == "DUNNO"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("policy action=")]
    assert len(lines) == 3, lines
    assert "name=Greylisted scanner=greylist" in lines[0]
    for line in lines[1:]:
        assert "scanner=greylist" in line, line
        assert "detail=passed (triplet passes" in line, line
        assert "not run for client" not in line


def test_defer_verb_can_be_an_explicit_code(serve, client_of) -> None:
    client = client_of(serve([greylist(min=300)], defer="450 4.7.1"))
    assert client.ask() == "450 4.7.1 Greylisted, please try again in 300 seconds"


def test_allow_list_answers_dunno_before_greylisting(serve, client_of) -> None:
    thread = serve(
        [
            deliver(client_network("192.0.2.0/24", const(1.0, "Trusted"))),
            deliver(sender_regexp([("Partner", r"@partner\.example$")])),
            greylist(min=300),
        ]
    )
    client = client_of(thread)
    assert client.ask() == "DUNNO"
    assert client.ask(request(client_address="198.51.100.1", sender="x@partner.example")) == "DUNNO"
    assert client.ask(request(client_address="198.51.100.1")).startswith("DEFER_IF_PERMIT Greylisted")
    assert [row[1] for row in counts(thread)] == ["alice@sender.example"]  # only the last one reached greylist


def test_deny_lists_reject_with_their_texts_and_verbs(serve, client_of) -> None:
    scanners = [
        reject(client_network("203.0.113.0/24", const(1.0, "Blocked.Net")), message="Access denied: %V"),
        sender_regexp([("Spammer", r"@spam\.example$")]),
        greylist(min=300),
    ]
    client = client_of(serve(scanners))
    assert client.ask(request(client_address="203.0.113.9")) == "REJECT Access denied: Blocked.Net"
    assert client.ask(request(sender="x@spam.example")) == "REJECT Rejected by policy: Spammer"
    coded = client_of(serve(scanners, reject="550 5.7.1"))
    assert coded.ask(request(sender="x@spam.example")) == "550 5.7.1 Rejected by policy: Spammer"


def test_drop_and_quarantine_become_discard_and_hold(serve, client_of) -> None:
    client = client_of(
        serve(
            [
                drop(recipient_regexp([("Trap", r"^trap@")])),
                quarantine("policy", sender_regexp([("Suspect", r"@suspect\.example$")])),
            ]
        )
    )
    assert client.ask(request(recipient="trap@example.test")) == "DISCARD Rejected by policy: Trap"
    assert client.ask(request(sender="a@suspect.example")) == "HOLD Rejected by policy: Suspect"
    assert client.ask() == "DUNNO"


def test_requests_sent_together_are_answered_in_order(serve, client_of) -> None:
    client = client_of(serve([sender_regexp([("Spammer", r"@spam\.example$")])]))
    client.send(request(sender="a@spam.example") + request() + request(sender="b@spam.example"))
    assert [client.answer() for _ in range(3)] == [
        "REJECT Rejected by policy: Spammer",
        "DUNNO",
        "REJECT Rejected by policy: Spammer",
    ]


def test_crlf_unknown_attributes_and_odd_bytes_are_tolerated(serve, client_of) -> None:
    client = client_of(serve([sender_regexp([("Spammer", r"@spam\.example$")])]))
    raw = request(sender="a@spam.example", future_attribute="x=y=z").replace(b"\n", b"\r\n")
    assert client.ask(raw) == "REJECT Rejected by policy: Spammer"
    assert client.ask(request(sender="\xe9l\xe8ve@example.test", recipient="b@example.test")) == "DUNNO"
    assert client.ask(b"request=smtpd_access_policy\nsender=\xff\xfe@x\nrecipient=b@example.test\n\n") == "DUNNO"


# --------------------------------------------------------------------------- malformed input


def test_lines_without_equals_sign_are_ignored(serve, client_of) -> None:
    client = client_of(serve([sender_regexp([("Spammer", r"@spam\.example$")])]))
    assert client.ask(b"garbage line\n" + request(sender="a@spam.example")) == "REJECT Rejected by policy: Spammer"


@pytest.mark.parametrize(
    "data",
    [
        b"\n",  # an empty request
        b"sender=a@b.example\nrecipient=c@d.example\n\n",  # no request=
        b"request=junk\nsender=a@b.example\n\n",  # another request type
    ],
)
def test_request_that_is_not_an_access_policy_request_gets_malformed_and_the_connection_goes_on(
    serve, client_of, data: bytes
) -> None:
    client = client_of(serve([greylist(min=300)]))
    assert client.ask(data) == MALFORMED
    assert client.ask().startswith("DEFER_IF_PERMIT Greylisted")


def test_overlong_line_is_answered_and_the_connection_closed(serve, client_of) -> None:
    thread = serve([greylist(min=300)])
    client = client_of(thread)
    assert client.ask(b"request=smtpd_access_policy\nsender=" + b"a" * (LINE_LIMIT + 10) + b"\n\n") == MALFORMED
    assert client.closed()
    assert client_of(thread).ask().startswith("DEFER_IF_PERMIT")  # the service itself is fine


def test_too_many_attributes_are_answered_and_the_connection_closed(serve, client_of) -> None:
    client = client_of(serve([greylist(min=300)]))
    flood = b"".join(b"x%d=1\n" % n for n in range(MAX_ATTRIBUTES + 1))
    assert client.ask(b"request=smtpd_access_policy\n" + flood + b"\n") == MALFORMED
    assert client.closed()


def test_eof_inside_a_request_closes_without_answer(serve, client_of) -> None:
    thread = serve([greylist(min=300)])
    client = client_of(thread)
    client.send(b"request=smtpd_access_policy\nsender=a@b.example\n")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.closed()
    assert client.buffer == b""
    assert counts(thread) == []  # nothing was evaluated


# --------------------------------------------------------------------------- database trouble


def test_database_down_answers_fail_closed_by_default_and_recovers(serve, client_of, tmp_path: Path) -> None:
    where = tmp_path / "later"
    thread = serve([greylist(min=300)], db.sqlite(str(where / "grey.db")))
    client = client_of(thread)
    assert client.ask() == DEFAULT_ON_ERROR
    assert client.ask() == DEFAULT_ON_ERROR  # the same connection keeps working
    where.mkdir()  # the database comes back
    assert client.ask().startswith("DEFER_IF_PERMIT Greylisted")


def test_database_down_can_fail_open(serve, client_of, tmp_path: Path) -> None:
    thread = serve([greylist(min=300)], db.sqlite(str(tmp_path / "missing" / "grey.db")), on_error="DUNNO")
    assert client_of(thread).ask() == "DUNNO"


def locked(thread: ServiceThread) -> sqlite3.Connection:
    """Another process's writer holding the database's write lock."""
    holder = sqlite3.connect(Path(thread.settings.state_dir) / "mailsift.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_database_locked_past_the_busy_timeout_gets_the_error_answer(serve, client_of) -> None:
    thread = serve([greylist(min=300)], db.sqlite(busy_timeout=0.2), on_error="450 4.3.0 Greylist database busy")
    client = client_of(thread)
    assert client.ask().startswith("DEFER_IF_PERMIT Greylisted")  # creates the database
    holder = locked(thread)
    try:
        assert client.ask(request(sender="other@sender.example")) == "450 4.3.0 Greylist database busy"
    finally:
        holder.rollback()
        holder.close()
    assert client.ask(request(sender="other@sender.example")).startswith("DEFER_IF_PERMIT Greylisted")


def test_database_hanging_past_the_service_timeout_gets_the_error_answer(serve, client_of, tmp_path: Path) -> None:
    database = db.sqlite(busy_timeout=60)
    (tmp_path / "state").mkdir()
    database.configure(str(tmp_path / "state"))  # the serve fixture's STATE_DIR
    database.migrate()  # as the supervisor does before its workers: the first request's 0.5 s is not the migration's
    thread = serve([greylist(min=300)], database, timeout=0.5)
    client = client_of(thread)
    assert client.ask().startswith("DEFER_IF_PERMIT Greylisted")
    holder = locked(thread)
    try:
        assert client.ask(request(sender="other@sender.example")) == DEFAULT_ON_ERROR
    finally:
        holder.rollback()
        holder.close()


# --------------------------------------------------------------------------- connections


def test_idle_connection_is_closed_after_idle_timeout(serve, client_of) -> None:
    client = client_of(serve([greylist(min=300)], idle_timeout=0.3))
    assert client.ask().startswith("DEFER_IF_PERMIT")
    assert client.closed()


def test_connections_beyond_the_limit_are_closed(serve, client_of) -> None:
    thread = serve([greylist(min=300)], max_connections=1)
    first = client_of(thread)
    assert first.ask().startswith("DEFER_IF_PERMIT")
    assert client_of(thread).closed()
    assert first.ask().startswith("DEFER_IF_PERMIT")


def test_drain_closes_idle_connections(serve, client_of) -> None:
    thread = serve([greylist(min=300)])
    client = client_of(thread)
    assert client.ask().startswith("DEFER_IF_PERMIT")
    thread.drain(5)
    assert client.closed()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"defer": "REJECT"}, "defer verb"),
        ({"defer": "550"}, "defer verb"),
        ({"reject": "DEFER"}, "reject verb"),
        ({"on_error": "MAYBE later"}, "on_error"),
        ({"on_error": "DUNNO\nREJECT"}, "on_error"),
        ({"on_error": "OK"}, "on_error"),  # before reject_unauth_destination: an open relay
        ({"timeout": 0}, "timeout"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_service_options_are_checked(options: dict[str, Any], message: str) -> None:
    from mailsift.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        smtpd_policy([greylist()], db.sqlite(), "127.0.0.1", 10031, **options)


def test_dbc_must_be_a_database() -> None:
    from mailsift.errors import ConfigError

    with pytest.raises(ConfigError, match="dbc must be a database"):
        smtpd_policy([greylist()], "sqlite:///x.db", "127.0.0.1", 10031)  # type: ignore[arg-type]
