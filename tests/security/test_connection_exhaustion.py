"""Finding 9 (issue 12), kept in the attack suite: one address opening more idle connections
than the gateway serves (the attack held 1,010 from 127.0.0.1) must not lock anybody else out.
Fixed by the per-address limits of the reliability work (issue 11); the fault matrix's
``test_idle_connections_and_slowloris`` runs the 2,000-connection version under load."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.faults import FaultClient, FaultyNextHop, Serve, account, check, idle_connections

OPTIONS: dict[str, str] = {}
"""Left as the defaults (max_connections 500 per worker, max_connections_per_address half of it)."""

ATTACK = 1010
"""Idle connections the attacker opened from one address (the finding's figure)."""


@pytest.fixture
def next_hop() -> Iterator[FaultyNextHop]:
    server = FaultyNextHop().start()
    try:
        yield server
    finally:
        server.stop()


def greeting(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    try:
        return sock.recv(512)
    except OSError:
        return b""


def test_idle_connections_from_one_address_do_not_lock_out_another(tmp_path: Path, next_hop: FaultyNextHop) -> None:
    with Serve(tmp_path, next_hop.port, **OPTIONS).start(workers=1) as serve:  # one worker: 500 connections
        held: list[socket.socket] = []
        try:
            held = idle_connections(serve.port, ATTACK)
            answers = [greeting(sock) for sock in held]
            client = FaultClient(serve.port, "honest", source="127.0.0.2", timeout=30)
            client.load(20)
            accounting = account(client, next_hop, serve.state)
        finally:
            for sock in held:
                sock.close()
        log = serve.log_text()
    served = sum(answer.startswith(b"220") for answer in answers)
    refused = sum(answer.startswith(b"421") for answer in answers)
    assert served + refused == len(answers) == ATTACK, (served, refused, len(answers))
    assert refused > 0, "no per-address limit: the attacker got every connection it asked for"
    check(accounting)
    assert accounting.accepted == accounting.sent == 20, accounting.summary()  # the honest client is served
    assert "max_connections_per_address" in log  # the refusal is logged (once per address)
