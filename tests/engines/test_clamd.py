"""The real clamd: the private test instance itself (more tests follow with the scanner)."""

from __future__ import annotations

from tests.engines.clamd_instance import ClamdInstance


def test_instance_answers_on_both_sockets(clamd_instance: ClamdInstance) -> None:
    assert clamd_instance.pid is not None
    assert clamd_instance.command("PING") == "PONG"
    assert clamd_instance.command("PING", tcp=True) == "PONG"
    assert clamd_instance.command("VERSION").startswith("ClamAV ")
