"""The one envelope-address check (mailsift.message.address) and the places that use it.

The milter smuggling string — an address with CR/LF that, written into SMTP,
becomes a second RCPT — is refused at the milter (501, never stored), at a
quarantine release (``AddressError``, nothing sent; ``--to`` a usage error),
and by the SMTP client itself (nothing written).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailsift import config as config_module
from mailsift import replies
from mailsift.cli.quarantine import quarantine_group
from mailsift.delivery.next_hop import SMTPDelivery
from mailsift.delivery.smtpclient import SMTPConnection
from mailsift.errors import MailsiftError
from mailsift.message.address import MAX_LENGTH, AddressError, address_problem, check_address, is_valid
from mailsift.message.mail import Envelope, Mail
from mailsift.message.result import Result
from mailsift.scanners.base import Scanner, Target
from mailsift.services.milter import milter
from mailsift.storage.quarantine.admin import release
from mailsift.storage.quarantine.index import get_entry
from mailsift.storage.quarantine.store import QuarantineStore, file_id
from mailsift.testing import RecordingServer, ServiceThread

SMUGGLING = "<a@attacker.example>\r\nRCPT TO:<victim@evil.example>"
"""As an MTA (or a client through it) would hand it to the milter."""
SMUGGLED = SMUGGLING[1:-1]
"""The same with its outer brackets taken off, as the front ends store addresses."""
MESSAGE = b"From: a@example.test\r\nSubject: x\r\n\r\nhello\r\n"


# --------------------------------------------------------------------------- the check


@pytest.mark.parametrize(
    "address",
    ["bob@example.test", "o'brien+tag@example.test", "postmaster", "ü@example.test", "a" * 60 + "@" + "b" * 400],
)
def test_plain_addresses_pass(address: str) -> None:
    assert address_problem(address) == ""
    assert check_address(address) == address
    assert is_valid(address)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        (SMUGGLING, "CR, LF or NUL"),
        (SMUGGLED, "CR, LF or NUL"),
        ("a@x\nRCPT TO:<b@y>", "CR, LF or NUL"),
        ("a@x\r", "CR, LF or NUL"),
        ("a\0@x", "CR, LF or NUL"),
        ("a\t@x", "control character"),
        ("a\x1b@x", "control character"),
        ("a\x7f@x", "control character"),
        ("a\x85@x", "control character"),
        ("a b@x", "whitespace"),
        ("a@x> SIZE=1", "whitespace"),
        ("a>@x", "'>'"),
        ("<a@x", "'<'"),
        ('"a"@x', "'\"'"),
        ("a\\b@x", "'\\\\'"),
        ("a\udc80@x", "control character"),  # an undecodable byte kept by surrogateescape
        ("a" * 500 + "@" + "b" * 20, f"longer than {MAX_LENGTH} bytes"),
        ("é" * 300, f"longer than {MAX_LENGTH} bytes"),  # bytes, not characters
        ("", "empty"),
    ],
)
def test_dangerous_addresses_are_refused(address: str, problem: str) -> None:
    assert problem in address_problem(address)
    assert not is_valid(address)
    with pytest.raises(AddressError) as raised:
        check_address(address, what="recipient")
    assert isinstance(raised.value, MailsiftError)
    assert raised.value.message.startswith("bad recipient ")
    assert raised.value.reply.code == 553
    assert raised.value.reply is replies.BAD_ADDRESS


def test_the_null_sender_only_where_allowed() -> None:
    assert address_problem("", allow_empty=True) == ""
    assert address_problem("") == "empty address"


# --------------------------------------------------------------------------- at the milter


class Recording(Scanner):
    name = "recording"

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []

    async def scan(self, target: Target) -> Result:
        self.seen.append((target.mail.envelope.sender, list(target.mail.envelope.recipients)))
        return Result(0.0, "", self.name)


def _packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


def _read(sock: socket.socket) -> tuple[bytes, bytes]:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            assert chunk, "closed"
            data += chunk
        return data

    (length,) = struct.unpack(">I", exactly(4))
    packet = exactly(length)
    return packet[:1], packet[1:]


@pytest.mark.parametrize("where", ["MAIL", "RCPT"])
@pytest.mark.parametrize("steps", [0x1FFFFF, 0], ids=["no-reply-steps", "every-step-answered"])
def test_the_milter_refuses_the_smuggling_string(tmp_path: Path, where: str, steps: int) -> None:
    scanner = Recording()
    service = milter([scanner], "t", "inet:0@127.0.0.1")
    with (
        ServiceThread(service, state_dir=str(tmp_path)) as thread,
        socket.create_connection(("127.0.0.1", thread.port), timeout=10) as sock,
    ):
        sock.sendall(_packet(b"O", struct.pack(">III", 6, 0x1FF, steps)))
        assert _read(sock)[0] == b"O"
        sender = SMUGGLING if where == "MAIL" else "<a@example.test>"
        recipient = SMUGGLING if where == "RCPT" else "<b@example.test>"
        commands = [(b"M", sender.encode() + b"\0"), (b"R", recipient.encode() + b"\0")]
        commands += [(b"L", b"Subject\0x\0"), (b"N", b""), (b"B", b"hello\r\n"), (b"E", b"")]
        answers = []
        for command, data in commands:
            sock.sendall(_packet(command, data))
            if command == b"E" or steps == 0:
                answers.append(_read(sock))
        final = answers[-1]
    expected = replies.BAD_SENDER if where == "MAIL" else replies.BAD_RECIPIENT
    refusal = (b"y", f"{expected.code} {expected.status} {expected.text}\0".encode())
    assert refusal in answers  # at the step itself when the MTA waits for it, else at end of message
    assert all(SMUGGLED not in (sender, *recipients) for sender, recipients in scanner.seen)  # never stored
    if where == "MAIL" or steps:  # (a recipient refused at its step is dropped by the MTA alone)
        assert final[0] == b"y"
        assert final[1].startswith(b"501 ")
        assert scanner.seen == []  # never scanned, stored or quarantined


# --------------------------------------------------------------------------- at the SMTP client


@pytest.fixture
def next_hop() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


def test_the_smtp_client_refuses_to_write_it(next_hop: RecordingServer) -> None:
    async def attempt() -> None:
        delivery = SMTPDelivery("127.0.0.1", next_hop.port)
        try:
            for sender, recipients in ((SMUGGLED, ["b@example.test"]), ("a@example.test", [SMUGGLED])):
                mail = Mail(Envelope(sender=sender, recipients=recipients), MESSAGE)
                with pytest.raises(AddressError):
                    await delivery.deliver(mail, MESSAGE)
            # the pooled connection is still clean: a good message goes through it
            good = Mail(Envelope(sender="a@example.test", recipients=["b@example.test"]), MESSAGE)
            await delivery.deliver(good, MESSAGE)
        finally:
            await delivery.close()

        connection = await SMTPConnection.open("127.0.0.1", next_hop.port, helo="t", timeout=10)
        try:
            with pytest.raises(AddressError):
                await connection.commands([b"MAIL FROM:<a@example.test>", f"RCPT TO:<{SMUGGLED}>".encode()])
            with pytest.raises(AddressError):
                await connection.command(b"RCPT TO:<a@x>\nRCPT TO:<b@y>")
        finally:
            connection.close()

    asyncio.run(attempt())
    assert [(m.sender, m.recipients) for m in next_hop.messages] == [("a@example.test", ["b@example.test"])]


# --------------------------------------------------------------------------- at release


def test_release_refuses_a_stored_smuggling_address(tmp_path: Path, next_hop: RecordingServer) -> None:
    """A message quarantined before the milter checked addresses: released, it would reach the victim."""
    config_path = tmp_path / "mailsift.conf.py"
    config_path.write_text(
        f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\n"
        f"SMTP_SERVER = ('127.0.0.1', {next_hop.port})\n"
    )
    config = config_module.load(str(config_path))
    settings = config.settings
    try:
        store = QuarantineStore(settings.quarantine_dir, settings.database)
        mail = Mail(Envelope(sender="a@example.test", recipients=[SMUGGLED]), MESSAGE)
        entry_id = file_id(asyncio.run(store.put(mail, "virus", Result(1.0, "Test", "regexp_scan"))))
        entry = settings.database.call(get_entry, entry_id)
        with pytest.raises(AddressError, match="bad recipient"):
            asyncio.run(release(settings, entry, by="admin"))
        with pytest.raises(AddressError):
            asyncio.run(release(settings, entry, recipients=[SMUGGLED], by="admin"))
        assert next_hop.messages == []
        assert settings.database.call(get_entry, entry_id).state == "held"

        runner = CliRunner()
        refused = runner.invoke(quarantine_group, ["release", "-c", str(config_path), entry_id, "--to", SMUGGLED])
        assert refused.exit_code == 2, refused.output
        assert "CR, LF or NUL" in refused.output
        cli = runner.invoke(quarantine_group, ["release", "-c", str(config_path), entry_id])
        assert cli.exit_code == 1
        assert "not released: bad recipient" in cli.stderr
        assert next_hop.messages == []
        done = runner.invoke(quarantine_group, ["release", "-c", str(config_path), entry_id, "--to", "b@example.test"])
        assert done.exit_code == 0, done.output
        assert [m.recipients for m in next_hop.messages] == [["b@example.test"]]
    finally:
        settings.database.dispose()
