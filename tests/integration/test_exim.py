"""The README's Exim block, run: a private Exim in front of ``mailsift serve`` and back.

Flow (amavisd-new's Exim recipe)::

    client --SMTP--> Exim :25'   router "mailsift" (not received on 10025')
                     -> transport mailsift_smtp -> mailsift smtpd :10024' (the README's after-queue config)
    mailsift --SMTP--> Exim :10025'  router "mailsift" declines -> local_maildir -> MAILDIR/bob/new/

(primes: this test's free ports; tests/helpers/exim.py moves the block's ports and puts its
public listener on loopback).  The Exim is Debian's ``exim4-daemon-light`` extracted by
``scripts/setup.sh --test`` (Debian's Exim and Postfix conflict as packages), run as root
with ``-C``.  mailsift's config is the README's ``after-queue`` block, unchanged but for
ports and paths (tests/helpers/readme.py).
"""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import pytest

from tests.helpers import readme
from tests.helpers.exim import EximInstance, debian_split_config, exim_home, localize, why_not_runnable
from tests.helpers.readme import Ports, Serve, wait_port, write_config
from tests.helpers.samples import EICAR_TEXT as EICAR

REASON = why_not_runnable()
needs_exim = pytest.mark.skipif(REASON is not None and not os.environ.get("CI"), reason=f"{REASON} (required in CI)")


def exim_block(word: str = "exim4.conf") -> str:
    """The README's Exim lines: ``exim4.conf`` (a single file) or ``update-exim4.conf.conf`` (Debian)."""
    [block] = [b for b in readme.of_kind("exim") if word in b.words]
    return block.text


@dataclass
class Gateway:
    exim: EximInstance
    ports: Ports
    state: Path
    log: Path


@contextmanager
def mailsift_serving(home: Path, ports: Ports) -> Iterator[Serve]:
    """``mailsift serve`` of the README's after-queue config, until a worker greets."""
    (home / "mailsift").mkdir(exist_ok=True)
    config = write_config(readme.named("after-queue"), ports, home / "mailsift")
    serve = Serve(config, home / "mailsift")
    try:
        wait_port(ports[10024], serve.process, serve.log)
        answering(ports[10024], serve)
        yield serve
    finally:
        serve.stop()


def readme_exim(home: Path, ports: Ports) -> EximInstance:
    (home / "exim").mkdir()
    return EximInstance(home / "exim", localize(exim_block(), ports), maildir_root=home / "mail")


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    if REASON is not None:  # CI: needs_exim did not skip, and Exim must run there
        pytest.fail(REASON)
    with exim_home() as home:
        ports = Ports()
        with mailsift_serving(home, ports) as serve, readme_exim(home, ports) as exim:
            exim.start([ports[25], ports[10025]])
            yield Gateway(exim, ports, home / "mailsift" / "state", serve.log)


def answering(port: int, serve: Serve, timeout: float = 60) -> None:
    """Until a worker greets on ``port`` (the supervisor's socket accepts before a worker serves it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.noop()
            return
        except (OSError, smtplib.SMTPException):
            assert serve.process.poll() is None, serve.log.read_text()
            assert time.monotonic() < deadline, serve.log.read_text()
            time.sleep(0.2)


def send(port: int, sender: str, recipient: str, body: str, subject: str) -> None:
    message = f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail(sender, [recipient], message.encode())


def wait_queue_empty(exim: EximInstance, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not exim.queue_is_empty():
        assert time.monotonic() < deadline, exim.log_text()
        time.sleep(0.2)


@needs_exim
def test_exim_accepts_the_readme_block_and_routes_by_port() -> None:
    """Exim's own checks (-bV, -bt): mail from outside goes to mailsift, mail back on 10025 is delivered."""
    if REASON is not None:
        pytest.fail(REASON)
    ports = Ports()
    with exim_home() as home:
        (home / "exim").mkdir()
        exim = EximInstance(home / "exim", localize(exim_block(), ports), maildir_root=home / "mail")
        exim.write()
        checked = exim.exim("-bV")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        outside = exim.exim("-bt", "bob@example.test")
        assert "router = mailsift, transport = mailsift_smtp" in outside.stdout, outside.stdout + outside.stderr
        assert "host 127.0.0.1 [127.0.0.1]" in outside.stdout
        back = exim.exim("-bt", "-oMi", f"127.0.0.1.{ports[10025]}", "bob@example.test")
        assert "router = local_maildir, transport = maildir" in back.stdout, back.stdout + back.stderr
        # Verification (RCPT) skips the mailsift router: Exim's own routers refuse unknown users.
        unknown = exim.exim("-bv", "nobody-here@example.test")
        assert "failed to verify" in unknown.stdout, unknown.stdout + unknown.stderr
        known = exim.exim("-bv", "bob@example.test")
        assert "bob@example.test verified" in known.stdout, known.stdout + known.stderr


@needs_exim
def test_clean_mail_goes_through_mailsift_and_arrives_once_with_its_header(gateway: Gateway) -> None:
    exim = gateway.exim
    send(gateway.ports[25], "editor@news.example", "bob@example.test", "Issue 42.", "newsletter")
    [delivered] = exim.wait_delivered("bob", timeout=90)
    message = message_from_bytes(delivered.read_bytes())
    assert message["X-Policy"] == "Newsletter"  # mailsift's header (the after-queue config's deliver rule)
    assert message["Subject"] == "newsletter"
    wait_queue_empty(exim)
    time.sleep(2)  # a second copy (a loop back through mailsift) would have arrived by now
    assert len(list(exim.maildir_new("bob").iterdir())) == 1
    mainlog = (exim.workdir / "log" / "mainlog").read_text()
    served = gateway.log.read_text()
    sent = [line for line in mainlog.splitlines() if "=> bob@example.test R=mailsift T=mailsift_smtp" in line]
    assert len(sent) == 1, mainlog + served
    assert "H=127.0.0.1 [127.0.0.1]" in sent[0]
    assert 'C="250 ' in sent[0]
    assert "defer" not in mainlog, mainlog + served  # the first attempt went through
    [back] = [line for line in mainlog.splitlines() if "<= editor@news.example" in line and "mailsift" in line]
    assert f"I=[127.0.0.1]:{gateway.ports[10025]}" in back, mainlog  # received back on the unfiltered port
    assert "R=local_maildir T=maildir" in mainlog
    assert "action=deliver reply=250" in served


@needs_exim
def test_eicar_is_quarantined_by_mailsift_and_never_delivered(gateway: Gateway) -> None:
    exim = gateway.exim
    send(gateway.ports[25], "alice@example.test", "carol@example.test", EICAR, "eicar via exim")
    held = gateway.state / "quarantine" / "virus"
    deadline = time.monotonic() + 90
    while not any(p.is_file() and b"eicar via exim" in p.read_bytes() for p in held.rglob("*")):
        assert time.monotonic() < deadline, exim.log_text() + gateway.log.read_text()[-3000:]
        time.sleep(0.2)
    wait_queue_empty(exim)
    assert not exim.maildir_new("carol").exists()
    assert "action=quarantine" in gateway.log.read_text()


@needs_exim
def test_debians_split_config_with_the_readme_lines_routes_by_port() -> None:
    """The README's Debian instructions: router in conf.d/router/010_mailsift, transport in
    conf.d/transport/30_mailsift, dc_local_interfaces; Debian's update-exim4.conf builds the file."""
    if REASON is not None:
        pytest.fail(REASON)
    ports = Ports()
    with exim_home() as home:
        block = localize(exim_block(), ports)
        settings = localize(exim_block("update-exim4.conf.conf"), ports, required=(25, 10025))
        built = debian_split_config(home, block, settings)
        text = built.read_text()
        assert text.index("\nmailsift:\n") < text.index("\ndomain_literal:\n")  # the first router
        run = EximInstance(home, block, maildir_root=home / "mail")
        run.config = built
        checked = run.exim("-bV")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        interfaces = run.exim("-bP", "local_interfaces").stdout.strip()
        assert interfaces == f"local_interfaces = <; [127.0.0.1]:{ports[25]} ; [127.0.0.1]:{ports[10025]}"
        outside = run.exim("-bt", "bob@example.test")
        assert "router = mailsift, transport = mailsift_smtp" in outside.stdout, outside.stdout + outside.stderr
        back = run.exim("-bt", "-oMi", f"127.0.0.1.{ports[10025]}", "root@example.test")
        assert back.returncode == 0, back.stdout + back.stderr
        assert "router = mailsift" not in back.stdout  # Debian's own routers deliver it


@needs_exim
def test_mailsift_down_exim_keeps_the_message_and_delivers_it_once_mailsift_is_back() -> None:
    if REASON is not None:
        pytest.fail(REASON)
    with exim_home() as home:
        ports = Ports()
        with readme_exim(home, ports) as exim:
            exim.start([ports[25], ports[10025]])
            send(ports[25], "editor@news.example", "bob@example.test", "kept while mailsift is down", "later")
            deadline = time.monotonic() + 60
            while "R=mailsift T=mailsift_smtp defer" not in (mainlog := (exim.workdir / "log" / "mainlog").read_text()):
                assert time.monotonic() < deadline, exim.log_text()
                time.sleep(0.2)
            assert "Connection refused" in mainlog
            assert not exim.queue_is_empty()  # kept, not bounced
            assert not exim.maildir_new("bob").exists()
            with mailsift_serving(home, ports):
                [delivered] = exim.wait_delivered("bob", timeout=120)  # the retry rule: 15 s
                assert message_from_bytes(delivered.read_bytes())["X-Policy"] == "Newsletter"
                wait_queue_empty(exim)
            assert len(list(exim.maildir_new("bob").iterdir())) == 1
