"""``mailsift scan-mailbox`` (SAGATOR's sgscan) and ``mailsift.cli.mailbox``: mbox and Maildir,
``--clean`` beside the originals (which stay byte-identical), ``--av-only``, exit status,
summary, progress bar on a terminal only."""

from __future__ import annotations

import email
import hashlib
import json
import mailbox as stdlib_mailbox
import os
import pty
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailsift.cli.mailbox import MailboxError, Maildir, Mbox, open_mailbox
from mailsift.cli.main import is_antivirus, main
from mailsift.scanners.actions import quarantine
from mailsift.scanners.basic import regexp_scan
from mailsift.scanners.engines.clamav import clamd
from mailsift.scanners.parsemail import parsemail


def message(subject: str, body: bytes | str = "Just text.\n") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    return f"From: a@example.net\nTo: b@example.org\nSubject: {subject}\n\n".encode() + body


def from_line(n: int) -> bytes:
    return f"From a@example.net Mon Jan  {n} 10:00:00 2024\n".encode()


EICAR_CONFIG = (
    "SCANNERS = [\n"
    "    quarantine('virus', parsemail(regexp_scan([('EICAR-Test', r'EICAR-STANDARD-ANTIVIRUS-TEST-FILE')]))),\n"
    "]\n"
)


def write_config(tmp_path: Path, body: str, name: str = "config.py") -> str:
    path = tmp_path / name
    path.write_text(f"from mailsift import *\nSTATE_DIR = {str(tmp_path / 'state')!r}\n{body}", encoding="utf-8")
    return str(path)


class Runner(CliRunner):
    """``mailsift scan-mailbox -c <config> ...``: the config is the test's own (EICAR by regexp)."""

    def __init__(self, config: str) -> None:
        super().__init__(catch_exceptions=False)
        self.config = config

    def scan(self, *args: str, config: str | None = None) -> Result:
        return self.invoke(main, ["scan-mailbox", "-c", config or self.config, *args])


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(write_config(tmp_path, EICAR_CONFIG))


@pytest.fixture
def chunks(eicar: bytes) -> list[bytes]:
    """An mbox's messages exactly as stored: From line, message, separator."""
    return [
        from_line(1) + message("first", "Hello.\n\nBye.\n") + b"\n",
        from_line(2) + message("infected", eicar + b"\n") + b"\n",
        from_line(3) + message("third", ">From quoted, as mbox writers do.\n") + b"\n",
        from_line(4) + message("last, no final separator"),
    ]


@pytest.fixture
def mbox(tmp_path: Path, chunks: list[bytes]) -> Path:
    path = tmp_path / "spool" / "alice"
    path.parent.mkdir()
    path.write_bytes(b"".join(chunks))
    return path


@pytest.fixture
def maildir(tmp_path: Path, eicar: bytes) -> Path:
    """A real Maildir (written by Python's mailbox module) with a Maildir++ subfolder."""
    path = tmp_path / "Maildir"
    box = stdlib_mailbox.Maildir(str(path), create=True)
    box.add(stdlib_mailbox.MaildirMessage(message("new clean")))
    seen = stdlib_mailbox.MaildirMessage(message("seen infected", eicar + b"\n"))
    seen.set_subdir("cur")
    seen.set_flags("S")
    box.add(seen)
    sent = box.add_folder("Sent")
    sent.add(stdlib_mailbox.MaildirMessage(message("sent clean")))
    sent.add(stdlib_mailbox.MaildirMessage(message("sent infected", b"see: " + eicar + b"\n")))
    (path / "tmp" / "1.partial").write_bytes(message("in delivery", eicar))  # tmp/ is not mail yet
    return path


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def records(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------- reading


def test_mbox_messages_are_split_on_from_lines_after_blank_lines(mbox: Path, chunks: list[bytes]) -> None:
    found = list(open_mailbox(str(mbox)))
    assert [m.key for m in found] == ["#1", "#2", "#3", "#4"]
    assert [m.raw for m in found] == chunks
    assert found[0].data == chunks[0][len(from_line(1)) : -1]  # no From line, no separator
    assert found[3].data.endswith(b"Just text.\n")
    assert sum(m.size for m in found) == mbox.stat().st_size == open_mailbox(str(mbox)).size


def test_a_from_line_inside_a_paragraph_is_body(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    path.write_bytes(
        from_line(1) + message("one", "Hello,\nFrom here on, it is body.\n") + b"\n" + from_line(2) + message("two")
    )
    first, second = Mbox(str(path))
    assert first.data.endswith(b"Hello,\nFrom here on, it is body.\n")
    assert email.message_from_bytes(second.data)["subject"] == "two"


def subjects(path: Path) -> list[str]:
    """The subjects as Python's mailbox module reads the mbox."""
    box = stdlib_mailbox.mbox(str(path), create=False)
    try:
        return [m["subject"] for m in box]
    finally:
        box.close()


def test_python_reads_the_same_messages(mbox: Path) -> None:
    ours = [email.message_from_bytes(m.data)["subject"] for m in Mbox(str(mbox))]
    assert ours == subjects(mbox) == ["first", "infected", "third", "last, no final separator"]


def test_a_crlf_mbox(tmp_path: Path) -> None:
    path = tmp_path / "crlf.mbox"
    path.write_bytes(
        b"From x Mon Jan  1 10:00:00 2024\r\nSubject: a\r\n\r\nA\r\n\r\n"
        b"From y Mon Jan  1 10:00:00 2024\r\nSubject: b\r\n\r\nB\r\n"
    )
    assert [m.data for m in Mbox(str(path))] == [b"Subject: a\r\n\r\nA\r\n", b"Subject: b\r\n\r\nB\r\n"]


def test_a_leading_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    # As in MimeKit's test data (unmunged.mbox.txt).
    path = tmp_path / "bom.mbox"
    path.write_bytes(b"\xef\xbb\xbf" + from_line(1) + message("with a BOM"))
    [found] = Mbox(str(path))
    assert found.raw == from_line(1) + message("with a BOM")
    assert email.message_from_bytes(found.data)["subject"] == "with a BOM"


def test_an_empty_mbox_has_no_messages(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert list(Mbox(str(path))) == []


def test_a_file_that_is_no_mbox(tmp_path: Path) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(message("single"))
    with pytest.raises(MailboxError, match="not an mbox file"):
        list(open_mailbox(str(path)))


def test_a_directory_that_is_no_maildir(tmp_path: Path) -> None:
    with pytest.raises(MailboxError, match="not a Maildir"):
        open_mailbox(str(tmp_path))


def test_maildir_messages_and_subfolders(maildir: Path) -> None:
    box = open_mailbox(str(maildir))
    assert isinstance(box, Maildir)
    found = {email.message_from_bytes(m.data)["subject"]: m for m in box}
    assert sorted(found) == ["new clean", "seen infected", "sent clean", "sent infected"]  # not tmp/
    assert found["seen infected"].key.startswith(os.path.join("cur", ""))
    assert found["seen infected"].key.endswith(":2,S")
    assert found["new clean"].key.startswith(os.path.join("new", ""))
    assert found["sent clean"].key.startswith(os.path.join(".Sent", "new", ""))
    assert all(m.data == m.raw == (maildir / m.key).read_bytes() for m in found.values())


def test_a_big_mbox_is_read_one_message_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "big.mbox"
    body = ("x" * 99 + "\n") * 1000  # 100 kB per message
    with path.open("wb") as handle:
        for n in range(200):  # 20 MB
            handle.write(from_line(1) + message(f"m{n}", body) + b"\n")
    tracemalloc.start()
    try:
        count = sum(1 for _ in Mbox(str(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200
    assert peak < 4 * 1024 * 1024, peak  # a few messages' worth, not the 20 MB file


# --------------------------------------------------------------------------- scanning an mbox


def test_scan_an_mbox(runner: Runner, mbox: Path) -> None:
    result = runner.scan("--json", str(mbox))
    assert result.exit_code == 1
    found = records(result)
    assert [(r["mailbox"], r["message"]) for r in found] == [(str(mbox), f"#{n}") for n in (1, 2, 3, 4)]
    assert [r["action"] for r in found] == ["deliver", "quarantine", "deliver", "deliver"]
    assert found[1]["name"] == "EICAR-Test"
    assert "cleaned" not in found[0]
    assert result.stderr.strip() == "4 messages in 1 mailboxes: 3 clean, 1 found, 0 errors"
    assert not Path(f"{mbox}.clean").exists()


def test_plain_output_lists_what_was_found_and_a_summary(runner: Runner, mbox: Path) -> None:
    result = runner.scan(str(mbox))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{mbox}:#2: quarantine level=1.0 EICAR-Test (regexp_scan)",
        "4 messages in 1 mailboxes: 3 clean, 1 found, 0 errors",
    ]
    assert "scanning" not in result.stderr  # no progress bar without a terminal


def test_clean_mbox(runner: Runner, mbox: Path, chunks: list[bytes]) -> None:
    before = hashlib.sha256(mbox.read_bytes()).hexdigest()
    os.chmod(mbox, 0o600)
    result = runner.scan("--clean", str(mbox))
    assert result.exit_code == 1
    output = Path(f"{mbox}.clean")
    assert hashlib.sha256(mbox.read_bytes()).hexdigest() == before
    assert output.read_bytes() == chunks[0] + chunks[2] + chunks[3]
    assert subjects(output) == ["first", "third", "last, no final separator"]
    assert output.stat().st_mode & 0o777 == 0o600
    lines = result.stdout.splitlines()
    assert lines[0] == f"{mbox}:#2: quarantine level=1.0 EICAR-Test (regexp_scan) [removed]"
    assert lines[-1] == f"4 messages in 1 mailboxes: 3 clean, 1 found, 0 errors; {output}: 3 kept, 1 removed"
    assert sorted(os.listdir(mbox.parent)) == ["alice", "alice.clean"]  # no temporary left


def test_clean_json_says_kept_or_removed(runner: Runner, mbox: Path) -> None:
    result = runner.scan("--clean", "--json", str(mbox))
    assert [r["cleaned"] for r in records(result)] == ["kept", "removed", "kept", "kept"]


def test_an_existing_output_is_refused_without_force(runner: Runner, mbox: Path, chunks: list[bytes]) -> None:
    output = Path(f"{mbox}.clean")
    output.write_bytes(b"precious")
    refused = runner.scan("--clean", "--json", str(mbox))
    assert refused.exit_code == 2
    assert "exists (use --force" in refused.stderr
    assert refused.stdout == ""  # nothing scanned
    assert output.read_bytes() == b"precious"
    forced = runner.scan("--clean", "--force", str(mbox))
    assert forced.exit_code == 1
    assert output.read_bytes() == chunks[0] + chunks[2] + chunks[3]


def test_all_clean_exits_0(runner: Runner, tmp_path: Path, chunks: list[bytes]) -> None:
    path = tmp_path / "clean.mbox"
    path.write_bytes(chunks[0] + chunks[2])
    result = runner.scan("--clean", str(path))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"2 messages in 1 mailboxes: 2 clean, 0 found, 0 errors; {path}.clean: 2 kept, 0 removed"
    ]
    assert Path(f"{path}.clean").read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------- scanning a Maildir


def test_clean_maildir(runner: Runner, maildir: Path) -> None:
    before = tree_hashes(maildir)
    result = runner.scan("--clean", "--json", str(maildir))
    assert result.exit_code == 1
    assert tree_hashes(maildir) == before
    found = records(result)
    subject = {r["message"]: email.message_from_bytes((maildir / r["message"]).read_bytes())["subject"] for r in found}
    verdicts = {subject[r["message"]]: (r["name"], r["cleaned"]) for r in found}
    assert verdicts == {
        "seen infected": ("EICAR-Test", "removed"),
        "new clean": ("", "kept"),
        "sent clean": ("", "kept"),
        "sent infected": ("EICAR-Test", "removed"),
    }
    output = Path(f"{maildir}.clean")
    kept = {r["message"] for r in found if r["cleaned"] == "kept"}
    files = {str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()}
    assert files == kept
    for key in kept:
        assert (output / key).read_bytes() == (maildir / key).read_bytes()
    cleaned = stdlib_mailbox.Maildir(str(output), create=False)
    assert sorted(m["subject"] for m in cleaned) == ["new clean"]
    assert sorted(m["subject"] for m in cleaned.get_folder("Sent")) == ["sent clean"]
    assert (output / "tmp").is_dir()
    assert result.stderr.strip().endswith(f"{output}: 2 kept, 2 removed")


def test_maildir_and_mbox_together(runner: Runner, maildir: Path, mbox: Path) -> None:
    result = runner.scan(str(maildir), str(mbox))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 4  # three findings and the summary
    assert lines[-1] == "8 messages in 2 mailboxes: 5 clean, 3 found, 0 errors"


# --------------------------------------------------------------------------- errors


def test_a_missing_mailbox_is_an_error_but_the_others_are_scanned(runner: Runner, mbox: Path, tmp_path: Path) -> None:
    result = runner.scan("--json", str(tmp_path / "nobody"), str(mbox))
    assert result.exit_code == 2
    assert "nobody: no such file or directory" in result.stderr
    assert len(records(result)) == 4


def test_a_bad_mbox_leaves_no_partial_output(runner: Runner, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    path = tmp_path / "notes" / "notes.txt"
    path.write_bytes(b"just some notes\n")
    result = runner.scan("--clean", str(path))
    assert result.exit_code == 2
    assert "not an mbox file" in result.stderr
    assert os.listdir(tmp_path / "notes") == ["notes.txt"]


def test_unscannable_messages_are_kept_and_exit_2(runner: Runner, mbox: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "class broken(Scanner):\n"
        "    name = 'broken'\n"
        "    async def scan(self, target):\n"
        "        if b'third' in target.data:\n"
        "            raise RuntimeError('engine crashed')\n"
        "        return Result(0.0, '', self.name)\n"
        "SCANNERS = [broken()]\n",
        "broken.py",
    )
    result = runner.scan("--clean", str(mbox), config=config)
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{mbox}:#3: tempfail level=0.0")
    assert "engine crashed" in lines[0]
    assert lines[0].endswith("[kept]")
    assert lines[-1].startswith("4 messages in 1 mailboxes: 3 clean, 0 found, 1 errors")
    assert Path(f"{mbox}.clean").read_bytes() == mbox.read_bytes()  # never lose mail


# --------------------------------------------------------------------------- --av-only

AV_CONFIG = (
    "class antivirus_regexp(regexp_scan):\n"
    "    antivirus = True\n"
    "SCANNERS = [\n"
    "    reject(parsemail(regexp_scan([('Spam.Word', r'cheap pills')]))),\n"
    "    quarantine('virus', parsemail(antivirus_regexp([('EICAR-Test', r'EICAR-STANDARD-ANTIVIRUS-TEST-FILE')]))),\n"
    "]\n"
)


def test_av_only_runs_only_the_antivirus_entries(runner: Runner, tmp_path: Path, mbox: Path) -> None:
    with mbox.open("ab") as handle:
        handle.write(b"\n" + from_line(5) + message("offer", "cheap pills\n"))
    config = write_config(tmp_path, AV_CONFIG, "av.py")
    everything = runner.scan("--json", str(mbox), config=config)
    assert [r["name"] for r in records(everything) if r["name"]] == ["EICAR-Test", "Spam.Word"]
    av_only = runner.scan("--json", "--av-only", str(mbox), config=config)
    assert av_only.exit_code == 1
    assert [r["name"] for r in records(av_only) if r["name"]] == ["EICAR-Test"]
    assert [r["action"] for r in records(av_only)][1] == "quarantine"  # the entry keeps its action


def test_av_only_without_an_antivirus_is_an_error(runner: Runner, mbox: Path) -> None:
    result = runner.scan("--av-only", str(mbox))  # the EICAR config: regexp only
    assert result.exit_code == 2
    assert "--av-only: no entry of SCANNERS contains an antivirus" in result.stderr


def test_which_entries_count_as_antivirus() -> None:
    assert is_antivirus(quarantine("virus", parsemail(clamd("/nonexistent/clamd.sock"))))
    assert not is_antivirus(parsemail(regexp_scan([("x", "y")])))


def test_help_documents_av_only() -> None:
    result = CliRunner().invoke(main, ["scan-mailbox", "--help"])
    assert result.exit_code == 0
    assert "--av-only" in result.stdout
    assert "antivirus = True" in result.stdout


# --------------------------------------------------------------------------- progress bar


def run_with_terminal(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    """Run ``mailsift`` with stderr on a pseudo-terminal; (status, stdout, terminal output)."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "MAILSIFT_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "100"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mailsift", *args], stdout=subprocess.PIPE, stderr=terminal, env=env
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    stdout, _ = process.communicate(timeout=120)
    return process.returncode, stdout.decode(), seen.decode("utf-8", "replace")


def test_the_progress_bar_shows_on_a_terminal_only(runner: Runner, tmp_path: Path, mbox: Path) -> None:
    status, stdout, terminal = run_with_terminal(["scan-mailbox", "-c", runner.config, str(mbox)], tmp_path)
    assert status == 1
    assert "scanning" in terminal
    assert "100%" in terminal
    assert "scanning" not in stdout
    assert stdout.splitlines()[-1] == "4 messages in 1 mailboxes: 3 clean, 1 found, 0 errors"
