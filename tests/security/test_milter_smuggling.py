"""Issue 12 finding 1: SMTP smuggling through the milter and a quarantine release.

The attack: an address with CR/LF handed to the milter
(``<a@attacker.example>\\r\\nRCPT TO:<victim@evil.example>\\r\\nDATA...``) with an
EICAR body was quarantined unchecked; its release wrote the address raw into
``MAIL FROM:``/``RCPT TO:`` and a second, never-scanned message went out, while
the log said "released to the original recipient".  Run here against a real
``mailsift serve`` (the milter service) and a recording next hop: the milter
refuses the address (501 through the milter protocol, one log line), the
message is quarantined for its honest recipient only, and its release sends
exactly one message, to that recipient, as the log says.  ``quarantine release
--to`` refuses the same kind of address.  (Every layer that writes an address
out checks it again: tests/unit/message/test_address.py.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from mailsift.testing import RecordingServer
from tests.helpers.milter_attacks import EICAR, MilterServe, connections

CONNECT = b"client.example.test\0" + b"4" + struct.pack(">H", 4567) + b"192.0.2.10\0"
SMUGGLING = (
    b"<a@attacker.example>\r\nRCPT TO:<victim@evil.example>\r\nDATA\r\n"
    b"Subject: never scanned\r\n\r\nX\r\n.\r\nMAIL FROM:<a@attacker.example>"
)


def test_smuggled_address_through_the_milter_then_release(tmp_path: Path) -> None:
    with RecordingServer() as hop, MilterServe(tmp_path, hop.port).start() as serve, connections(serve.port) as open_:
        wire = open_()
        for command, data in ((b"C", CONNECT), (b"H", b"helo.example.test\0")):
            wire.send(command, data)
            assert wire.read() == (b"c", b"")
        wire.send(b"D", b"M" + b"i\0" + b"QSMUG1\0")
        wire.send(b"M", b"<a@attacker.example>\0")
        assert wire.read() == (b"c", b"")
        wire.send(b"R", b"<bob@example.test>\0")
        assert wire.read() == (b"c", b"")
        wire.send(b"R", SMUGGLING + b"\0")
        assert wire.read() == (b"y", b"501 5.1.3 Bad recipient address syntax\0")
        for command, data in ((b"L", b"Subject\0invoice\0"), (b"N", b""), (b"B", EICAR)):
            wire.send(command, data)
            assert wire.read() == (b"c", b"")
        wire.send(b"E", b"")
        assert wire.read() == (b"d", b"")  # quarantined in mailsift's store, discarded at the MTA
        # the same address as the sender: the message is refused
        wire.send(b"M", SMUGGLING + b"\0")
        assert wire.read() == (b"y", b"501 5.1.7 Bad sender address syntax\0")
        wire.send(b"A", b"")

        listed = serve.cli("quarantine", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert (entry["sender"], entry["recipients"]) == ("a@attacker.example", ["bob@example.test"])

        released = serve.cli("quarantine", "release", entry["id"], "--by", "admin")
        assert released.returncode == 0, released.stderr
        assert [(m.sender, m.recipients) for m in hop.messages] == [("a@attacker.example", ["bob@example.test"])]
        assert f"released {entry['id']} by=admin to=<bob@example.test>" in released.stderr
        assert b"never scanned" not in hop.messages[0].data

        smuggled_to = serve.cli("quarantine", "release", entry["id"], "--force", "--to", "a@x\r\nRCPT TO:<b@y>")
        assert smuggled_to.returncode == 2
        assert "contains CR, LF or NUL" in smuggled_to.stderr
        assert len(hop.messages) == 1  # nothing more went out

    log = serve.log_text()
    assert log.count("refusing a bad address") == 2
    assert "\nRCPT TO:<victim@evil.example>" not in log  # the address is logged escaped, on its line
