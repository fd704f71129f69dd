"""Throw-away smoke test for postfix_instance.py (run as root with the project venv's python)."""

from __future__ import annotations

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


def swaks(port: int, to: str, subject: str) -> str:
    cmd = [
        "swaks",
        "--server",
        f"127.0.0.1:{port}",
        "--to",
        to,
        "--from",
        "alice@example.test",
        "--header",
        f"Subject: {subject}",
        "--timeout",
        "20",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"swaks failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def run_case(reject: bool) -> None:
    # Two separate 0700 base dirs, like pytest's tmp_path, to prove Postfix copes with them.
    work = Path(tempfile.mkdtemp(prefix="pf-work-")) / "pf"
    mail = Path(tempfile.mkdtemp(prefix="pf-mail-")) / "maildirs"
    inbound, reinject, filter_port = free_port(), free_port(), free_port()
    controller = Controller(
        Relay(reinject, reject), hostname="127.0.0.1", port=filter_port, server_hostname="smoke-filter.test"
    )
    controller.start()
    pf = PostfixInstance(
        work,
        inbound_port=inbound,
        reinject_port=reinject,
        content_filter=PostfixInstance.scan_filter(filter_port),
        maildir_root=mail,
    )
    t0 = time.monotonic()
    try:
        pf.start()
        print(f"== case reject={reject}: started in {time.monotonic() - t0:.2f}s, pids={pf.pids()}")
        out = swaks(inbound, "bob@example.test", f"smoke reject={reject}")
        print("\n".join(line for line in out.splitlines() if line.startswith("<~ 250") or "queued" in line))
        if not reject:
            [path] = pf.wait_delivered("bob@example.test", timeout=30)
            msg = email.message_from_bytes(path.read_bytes())
            assert msg["X-Smoke-Filter"] == "yes", msg.as_string()
            print(f"delivered {path} ({path.stat().st_uid=}) X-Smoke-Filter={msg['X-Smoke-Filter']}")
        else:
            # The 550 from the filter makes Postfix bounce to the sender (also local here).
            [bounce] = pf.wait_delivered("alice@example.test", timeout=30)
            text = bounce.read_text(errors="replace")
            assert "550 5.7.1 rejected" in text, text
            print(f"bounce delivered to {bounce}")
            assert not pf.maildir_new("bob@example.test").exists()
        pf.wait_queue_empty(timeout=30)
        print("queue empty:", pf.queue_is_empty())
        print("--- maillog (relevant lines) ---")
        for line in pf.log_text().splitlines():
            if any(k in line for k in ("status=", "warning", "fatal", "error", "panic", "starting", "stopping")):
                print(line)
    finally:
        pf.stop()
        controller.stop()
    assert not pf.pids(), pf.pids()
    print(f"stopped; leftover pids: {pf.pids()}")
    print("--- tail after stop ---")
    print("\n".join(pf.log_text().splitlines()[-3:]))


if __name__ == "__main__":
    run_case(reject=False)
    run_case(reject=True)
    print("SMOKE OK")
