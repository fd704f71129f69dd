"""Throw-away smoke test for postfix_instance.py (run as root with the project venv's python).

Runs two private Postfix instances *at the same time*, each behind a tiny aiosmtpd "filter":
  A: the filter adds ``X-Smoke-Filter: yes`` and re-injects -> delivered to bob's Maildir.
  B: the filter answers ``550 5.7.1 rejected`` -> Postfix bounces to the sender (alice), bob gets nothing.
Then C (on A): the filter is down -> Postfix defers; once it is back, the 1 s backoff/flush delivers.
"""

from __future__ import annotations

import contextlib
import email
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

sys.path.insert(0, str(Path(__file__).parent))
from postfix_instance import PostfixInstance, free_port


class Relay:
    """Tiny after-queue filter: add a header and forward to the reinject port, or reject."""

    def __init__(self, reinject_port: int, reject: bool = False) -> None:
        self.reinject_port = reinject_port
        self.reject = reject

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reject:
            return "550 5.7.1 rejected"
        data = b"X-Smoke-Filter: yes\r\n" + (envelope.original_content or b"")
        await aiosmtplib.send(
            data,
            sender=envelope.mail_from,
            recipients=envelope.rcpt_tos,
            hostname="127.0.0.1",
            port=self.reinject_port,
            timeout=30,
        )
        return "250 2.0.0 Ok: forwarded"


def swaks(port: int, to: str, subject: str, *, expect_ok: bool = True) -> str:
    cmd = ["swaks", "--server", f"127.0.0.1:{port}", "--to", to, "--from", "alice@example.test"]
    cmd += ["--header", f"Subject: {subject}", "--timeout", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if (proc.returncode == 0) != expect_ok:
        raise RuntimeError(f"swaks rc={proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("<~", "<*", "<-  250 2.0.0")))


def relay_controller(reinject_port: int, filter_port: int, reject: bool = False) -> Controller:
    relay = Relay(reinject_port, reject)
    return Controller(relay, hostname="127.0.0.1", port=filter_port, server_hostname="smoke-filter.test")


def make(reject: bool) -> tuple[PostfixInstance, Controller]:
    # Separate 0700 base dirs, like pytest's tmp_path, to prove Postfix copes with them.
    work = Path(tempfile.mkdtemp(prefix="pf-work-")) / "pf"
    mail = Path(tempfile.mkdtemp(prefix="pf-mail-")) / "maildirs"
    inbound, reinject, filter_port = free_port(), free_port(), free_port()
    controller = relay_controller(reinject, filter_port, reject)
    pf = PostfixInstance(
        work,
        inbound_port=inbound,
        reinject_port=reinject,
        content_filter=PostfixInstance.scan_filter(filter_port),
        maildir_root=mail,
    )
    return pf, controller


def show_log(name: str, pf: PostfixInstance) -> None:
    print(f"--- {name}: maillog (relevant lines) ---")
    keys = ("status=", "warning", "fatal", "error", "panic", "reject:", "starting", "stopping", "daemon started")
    for line in pf.log_text().splitlines():
        if any(k in line for k in keys):
            print(line)


def main() -> None:
    a, ctl_a = make(reject=False)
    b, ctl_b = make(reject=True)
    try:
        for name, pf, ctl in (("A", a, ctl_a), ("B", b, ctl_b)):
            ctl.start()
            t0 = time.monotonic()
            pf.start()
            print(f"== {name} started in {time.monotonic() - t0:.2f}s, inbound={pf.inbound_port} pids={pf.pids()}")

        print("== A: send to Bob@Example.TEST (mixed case) via filter that forwards")
        print(swaks(a.inbound_port, "Bob@Example.TEST", "smoke A"))
        print("== B: send to bob@example.test via filter that rejects")
        print(swaks(b.inbound_port, "bob@example.test", "smoke B"))
        print("== A: unknown mailbox and foreign domain are refused at RCPT")
        print(swaks(a.inbound_port, "nosuchuser@example.test", "unknown", expect_ok=False))
        print(swaks(a.inbound_port, "someone@elsewhere.test", "relay", expect_ok=False))

        [path] = a.wait_delivered("bob@example.test", timeout=30)
        msg = email.message_from_bytes(path.read_bytes())
        assert msg["X-Smoke-Filter"] == "yes", msg.as_string()
        print(f"A delivered {path} (uid={path.stat().st_uid}) X-Smoke-Filter={msg['X-Smoke-Filter']}")

        [bounce] = b.wait_delivered("alice@example.test", timeout=30)
        text = bounce.read_text(errors="replace")
        assert "550 5.7.1 rejected" in text, text
        assert not b.maildir_new("bob@example.test").exists()
        print(f"B bounce delivered to {bounce}; bob has no mail")

        for name, pf in (("A", a), ("B", b)):
            pf.wait_queue_empty(timeout=30)
            print(f"{name} queue empty: {pf.queue_is_empty()}")

        print("== C: filter of A down -> deferred, then back up -> delivered")
        ctl_a.stop()
        print(swaks(a.inbound_port, "carol@example.test", "smoke C"))
        deadline = time.monotonic() + 30
        while not (queue := a.queue()) or not queue[0]["recipients"][0].get("delay_reason"):  # type: ignore[index]
            assert time.monotonic() < deadline, a.log_text()[-2000:]
            time.sleep(0.2)
        print("A queue:", queue[0]["queue_name"], queue[0]["recipients"])
        ctl_a = relay_controller(a.reinject_port, ctl_a.port)  # a stopped Controller cannot restart
        ctl_a.start()
        a.flush()
        t0 = time.monotonic()
        [path] = a.wait_delivered("carol@example.test", timeout=30)
        print(f"C delivered {time.monotonic() - t0:.2f}s after restart: {path.name}")
        a.wait_queue_empty(timeout=30)
        show_log("A", a)
        show_log("B", b)
    finally:
        for pf, ctl in ((a, ctl_a), (b, ctl_b)):
            pf.stop()
            with contextlib.suppress(Exception):
                ctl.stop()
    for name, pf in (("A", a), ("B", b)):
        assert not pf.pids(), pf.pids()
        print(f"{name} stopped; leftover pids: {pf.pids()}; last log line:")
        print("  " + pf.log_text().splitlines()[-1])
    print("SMOKE OK")


if __name__ == "__main__":
    main()
