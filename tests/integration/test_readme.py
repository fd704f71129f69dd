"""The README, executed: its marked blocks run as a reader would run them.

* ``config``: every config block through ``mailsift check-config -c`` (fragments marked
  ``prelude`` after a few lines that define what they assume: ``SCANNERS``, ``CLAMD``, ...);
* ``shell serve=bundled``: the quick start's swaks lines against ``mailsift serve`` of the
  bundled config (its own clamd and spamd), each line's ``# 250, in var/...`` comment checked;
* ``shell config=...``: the commands with that config (``MAILSIFT_CONFIG``), in a fresh
  directory, before any ``serve`` (finding 2: ``user add`` before the first serve);
* ``postfix``: the main.cf/master.cf lines loaded into a private Postfix
  (tests/helpers/postfix.py) in front of the README's own mailsift config, mail sent through.

What the harness changes, and only this: fixed loopback ports become free ones and
``/var/lib/mailsift``, ``/run/...`` move under the test's directory
(``tests.helpers.readme.localize``); a config gets ``USER = None`` appended (the tests keep
their user). The web quarantine recipe is logged into in tests/browser/test_readme_webq.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from mailsift.cli.main import main
from mailsift.config import DEFAULT_CONFIG
from mailsift.testing import free_port
from tests.helpers import readme
from tests.helpers.postfix import PostfixInstance, postfix_home
from tests.helpers.readme import (
    BIN,
    Ports,
    Serve,
    environment,
    run_shell_block,
    shell_commands,
    wait_port,
    write_config,
)
from tests.helpers.samples import EICAR_TEXT as EICAR

# ---------------------------------------------------------------- config blocks

CONFIGS = readme.of_kind("config")


@pytest.mark.parametrize("block", CONFIGS, ids=[f"{b.name}@{b.where()}" for b in CONFIGS])
def test_config_block_passes_check_config(block: readme.Block, tmp_path: Path) -> None:
    config = write_config(block, Ports(), tmp_path)
    assert not (tmp_path / "state").exists()  # a fresh machine: check-config makes STATE_DIR (log_file's too)
    # In-process (click's runner: the same command, without a Python start per block).
    result = CliRunner().invoke(main, ["check-config", "-c", str(config)])
    assert result.exit_code == 0, f"{block.where()}:\n{config.read_text()}\n{result.output}"
    # No warning either: e.g. a webq without listed() (finding 3), a reject behind the queue.
    assert "warning:" not in result.output, f"{block.where()}:\n{result.output}"


def test_the_check_config_sample_is_its_real_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Command section's sample: each run of lines between two ``...`` is check-config's own
    output on the bundled config (in the clone, STATE_DIR ./var), consecutive and in order."""
    [block] = [b for b in readme.of_kind("skip") if b.text.startswith("$ .venv/bin/mailsift check-config\n")]
    sample = block.text.replace("/srv/mailsift/src/mailsift/data/default_config.py", str(DEFAULT_CONFIG))
    sample = sample.replace("/srv/mailsift/var", str(tmp_path / "var"))
    monkeypatch.chdir(tmp_path)
    env = {"MAILSIFT_USER": "", "MAILSIFT_CONFIG": None, "MAILSIFT_STATE_DIR": None}
    result = CliRunner(env=env).invoke(main, ["check-config"])
    assert result.exit_code == 0, result.output
    real = result.stdout.splitlines()
    chunks: list[list[str]] = [[]]
    for line in sample.splitlines()[1:]:
        if line.strip() == "...":
            chunks.append([])
        else:
            chunks[-1].append(line)
    at = 0
    for chunk in chunks:
        found = next((i for i in range(at, len(real)) if real[i : i + len(chunk)] == chunk), None)
        assert found is not None, f"{block.where()}: not in check-config's output (in order):\n" + "\n".join(chunk)
        at = found + len(chunk)
    assert real[-1] == sample.splitlines()[-1] == "config OK"


def test_check_config_warns_about_rejects_behind_the_queue(tmp_path: Path) -> None:
    """What the README says of after_queue=True: the Configuration block's reject is then warned about."""
    ports = Ports()
    config = write_config(readme.named("configuration"), ports, tmp_path)
    behind = readme.localize('SRV = [smtpd(SCANNERS, "127.0.0.1", 10024, after_queue=True)]\n', ports, tmp_path)
    config.write_text(config.read_text() + behind)
    result = CliRunner().invoke(main, ["check-config", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "after_queue=True and reject(" in result.output, result.output
    assert "backscatter" in result.output


# ---------------------------------------------------------------- shell blocks


def data_reply(transcript: str) -> str:
    """The server's answer to the end of DATA (or the first refusal) in a swaks transcript."""
    lines = transcript.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == "-> ." and index + 1 < len(lines):
            return lines[index + 1]
    refusals = [line for line in lines if line.startswith("<**")]
    return refusals[0] if refusals else transcript


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Ports]]:
    """The bundled default config served in a fresh directory, as scripts/run.sh serves it (STATE_DIR=var)."""
    if not (Path("/usr/sbin/clamd").exists() and Path("/usr/sbin/spamd").exists()):
        pytest.skip("clamd and spamd are installed by scripts/setup.sh")
    cwd = tmp_path_factory.mktemp("quickstart")
    ports = Ports()
    # The bundled file itself, on this test's ports (10024 and 10783 may be taken here).
    text = Path(DEFAULT_CONFIG).read_text()
    for port in (10024, 10783, 10080):  # smtpd, spamd, webq
        text = text.replace(str(port), str(ports[port]))
    config = cwd / "default_config.py"
    config.write_text(text)
    serve = Serve(config, cwd)
    try:
        deadline = time.monotonic() + 120
        answering = re.compile(r"(clamd_daemon|spamd_daemon)\(.*\) answers \(")
        while len(set(answering.findall(serve.log.read_text()))) < 2:
            assert serve.process.poll() is None, serve.log.read_text()
            assert time.monotonic() < deadline, serve.log.read_text()
            time.sleep(0.2)
        yield cwd, ports
    finally:
        serve.stop()


SERVED_SHELL = [b for b in readme.of_kind("shell") if b.args.get("serve") == readme.SERVE_BUNDLED and not b.name]


@pytest.mark.parametrize("block", SERVED_SHELL, ids=[b.where() for b in SERVED_SHELL])
def test_quick_start_commands_do_what_their_comments_say(block: readme.Block, bundled: tuple[Path, Ports]) -> None:
    cwd, ports = bundled
    commands = shell_commands(block.text)
    assert commands
    for command, comment in commands:
        expected = re.match(r"(?P<code>\d{3})(?P<text>[^,.]*)", comment)
        assert expected, f"{block.where()}: no expected reply in the comment of {command!r}"
        folder = re.search(r"\bin (var/\S+?)/?$", comment)
        before = set((cwd / folder[1]).rglob("*")) if folder else set()
        result = subprocess.run(
            ["bash", "-c", readme.localize(command, ports, cwd)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            env=environment(),
            check=False,
        )
        reply = data_reply(result.stdout + result.stderr)
        assert expected["code"] in reply, f"{block.where()}: {command}\n{result.stdout}{result.stderr}"
        assert expected["text"].strip() in reply, f"{block.where()}: {command}\n{reply}"
        if folder:
            added = [p for p in set((cwd / folder[1]).rglob("*")) - before if p.is_file()]
            assert added, f"{block.where()}: nothing new in {folder[1]} after {command}"


def test_quick_start_release_goes_into_the_local_maildir(bundled: tuple[Path, Ports]) -> None:
    """Finding 10: the quick start's `quarantine list` and `quarantine release ID`, ID the newest held
    message (the harness's one substitution), without -c (the bundled config, STATE_DIR ./var)."""
    cwd, ports = bundled
    block = readme.named("quickstart-release")
    if not (cwd / ".venv").is_symlink():  # the README runs .venv/bin/mailsift in the clone
        (cwd / ".venv").symlink_to(BIN.parent)
    assert send(ports[10024], "alice@example.test", EICAR, "release me") == (250, "")  # this test's own
    mailbox = cwd / "var" / "mail" / "bob@example.test" / "new"
    before = set(mailbox.glob("*")) if mailbox.exists() else set()
    listed = subprocess.run(
        [str(BIN / "mailsift"), "quarantine", "list", "--json", "--state", "held"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        check=True,
    )
    newest = json.loads(listed.stdout)[0]["id"]
    for command, _comment in shell_commands(block.text):
        result = subprocess.run(
            ["bash", "-c", command.replace(" ID", f" {newest}")],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            env=environment(),
            check=False,
        )
        assert result.returncode == 0, f"{block.where()}: {command}\n{result.stdout}{result.stderr}"
    released = [p.read_bytes() for p in set(mailbox.glob("*")) - before]
    assert any(b"Subject: release me" in m for m in released), released


def test_quick_start_first_admin_logs_in_at_the_logged_url(bundled: tuple[Path, Ports]) -> None:
    """Build 10: serve logs the web quarantine's URL and the command making the first admin; the
    README's command (no -c: the bundled config, STATE_DIR ./var), the password typed twice on
    stdin, then logging in at that URL as `admin` works."""
    cwd, ports = bundled
    block = readme.named("quickstart-admin")
    if not (cwd / ".venv").is_symlink():  # the README runs .venv/bin/mailsift in the clone
        (cwd / ".venv").symlink_to(BIN.parent)
    logged = re.search(
        r"web quarantine: (\S+) \(the first admin: mailsift user add admin --admin",
        (cwd / "default_config.log").read_text(),
    )
    assert logged, (cwd / "default_config.log").read_text()
    url = logged[1]
    assert url == readme.localize("http://127.0.0.1:10080/", ports, cwd)  # the address the README gives
    for command, _comment in shell_commands(block.text):
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            input=f"{readme.PASSWORD}\n{readme.PASSWORD}\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=environment(),
            start_new_session=True,  # no controlling terminal: the prompt reads stdin
            check=False,
        )
        assert result.returncode == 0, f"{block.where()}: {command}\n{result.stdout}{result.stderr}"
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token, form.text
        data = {"login": "admin", "password": readme.PASSWORD, "csrf_token": token[1], "next": "/"}
        answer = client.post("login", data=data)
        assert answer.status_code == 303, answer.text
        page = client.get("/", follow_redirects=True)
        assert page.status_code == 200
        assert page.url.path != "/login", page.text
        assert "Wrong login or password" not in page.text
        assert 'class="logout"' in page.text, page.text  # logged in
        assert ">admin<" in page.text or "admin (" in page.text or "admin</" in page.text, page.text


CONFIGURED_SHELL = [b for b in readme.of_kind("shell") if "config" in b.args]


@pytest.mark.parametrize("block", CONFIGURED_SHELL, ids=[b.where() for b in CONFIGURED_SHELL])
def test_commands_work_before_the_first_serve(block: readme.Block, tmp_path: Path) -> None:
    """Finding 2: the README's commands, with its config, in a directory no serve has run in."""
    config = write_config(readme.named(block.args["config"]), Ports(), tmp_path)
    assert not (tmp_path / "state").exists()
    result = run_shell_block(block, tmp_path, config)
    assert result.returncode == 0, f"{block.where()}:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "state").is_dir()
    if block.name == "users":  # the recipe's userconv applied: `admin` is stored as admin@example.com
        assert "admin@example.com" in result.stdout, result.stdout
    if block.name == "backup":  # one tar file, readable by its owner only
        [tar] = tmp_path.glob("mailsift-*.tar")
        assert tar.stat().st_mode & 0o077 == 0


# ---------------------------------------------------------------- Postfix blocks

needs_postfix = pytest.mark.skipif(
    not os.environ.get("CI") and (shutil.which("swaks") is None or not os.path.exists("/usr/sbin/postfix")),
    reason="Postfix and swaks are installed by scripts/test.sh (required in CI)",
)


class ReadmePostfix(PostfixInstance):
    """The private Postfix with the README's master.cf services in place of the fixture's own
    ``scan`` transport and reinjection smtpd, and the inbound smtpd without its own content_filter
    (main.cf's, from the README, applies)."""

    def __init__(self, *args: object, readme_master_cf: str = "", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.readme_master_cf = readme_master_cf

    def master_cf(self) -> str:
        if not self.readme_master_cf:
            return super().master_cf()
        entries: list[list[str]] = []
        for line in super().master_cf().splitlines():
            if line[:1].isspace() and entries:
                entries[-1].append(line)
            else:
                entries.append([line])
        kept = []
        for entry in entries:
            service = entry[0].split()[0] if entry[0].strip() else ""
            if service in ("scan", f"127.0.0.1:{self.reinject_port}"):
                continue
            kept.append("\n".join(line for line in entry if line.strip() != "-o content_filter="))
        return "\n".join(kept) + "\n" + self.readme_master_cf


def postfix_blocks(group: str) -> tuple[str, str]:
    """(main.cf text, master.cf text) of a group; ``lmtp`` reuses the content filter's master.cf."""
    main = "".join(b.text for b in readme.of_kind("postfix") if b.args["group"] == group and "main.cf" in b.words)
    source = "content-filter" if group == "lmtp" else group
    master = "".join(b.text for b in readme.of_kind("postfix") if b.args["group"] == source and "master.cf" in b.words)
    return main, master


@pytest.fixture
def through_postfix() -> Iterator[object]:
    """``start(group, config_name, **main_cf)``: mailsift serving the README config, the private
    Postfix with the group's README lines in front of it; stopped at teardown."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix master must run as root")
    # Not under pytest's basetemp (another pytest session resets it to 0700) and short: Postfix's
    # unix socket paths must fit in 108 bytes.
    with postfix_home(prefix="readme-pf-") as tmp_path:
        yield from _through_postfix(tmp_path)


def _through_postfix(tmp_path: Path) -> Iterator[object]:
    running: list[Serve | PostfixInstance] = []

    def start(group: str, config_name: str, wait_for: int, **extra_main_cf: str) -> PostfixInstance:
        ports = Ports()
        inbound, reinject = free_port(), ports[10025]
        root = tmp_path / f"{group}-{len(running)}"
        root.mkdir()
        serve = Serve(write_config(readme.named(config_name), ports, root), root)
        running.append(serve)
        wait_port(ports[wait_for], serve.process, serve.log)
        main, master = postfix_blocks(group)
        settings = readme.postfix_settings(readme.localize(main, ports, root))
        settings.update(extra_main_cf)
        postfix = ReadmePostfix(
            root / "postfix",
            inbound_port=inbound,
            reinject_port=reinject,
            content_filter=None,
            maildir_root=root / "mail",
            extra_main_cf=settings,
            readme_master_cf=readme.localize(master, ports, root),
        )
        running.append(postfix)
        postfix.start()
        return postfix

    try:
        yield start
    finally:
        for item in reversed(running):
            item.stop()


def send(port: int, sender: str, body: str, subject: str = "readme", headers: str = "") -> tuple[int, str]:
    message = f"From: {sender}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n{headers}\r\n{body}\r\n"
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.sendmail(sender, ["bob@example.test"], message.encode())
    except smtplib.SMTPRecipientsRefused as error:
        code, text = error.recipients["bob@example.test"]
        return code, text.decode()
    except smtplib.SMTPResponseException as error:
        return error.smtp_code, error.smtp_error.decode()
    return 250, ""


@needs_postfix
def test_postfix_content_filter_lines(through_postfix: object) -> None:
    """main.cf's content_filter and master.cf's scan transport and reinjection smtpd, in front of
    the config under Configuration: mail goes through mailsift and back into Postfix."""
    postfix = through_postfix("content-filter", "after-queue", 10024)  # type: ignore[operator]
    assert send(postfix.inbound_port, "editor@news.example", "Issue 42.", "newsletter") == (250, "")
    [delivered] = postfix.wait_delivered("bob@example.test", timeout=60)
    text = delivered.read_text()
    assert "X-Policy: Newsletter" in text  # mailsift's deliver(add_header(...)) ran
    assert text.count("Received: ") >= 2  # and Postfix's reinjection smtpd took it back
    # An executable behind the queue is quarantined, not rejected: no bounce (backscatter).
    mime = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
    exe = "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
    exe += 'Content-Type: application/octet-stream; name="run.exe"\r\n\r\nMZ\r\n--b--'
    assert send(postfix.inbound_port, "someone@forged.example", exe, "run me", mime) == (250, "")
    held = postfix.workdir.parent / "state" / "quarantine" / "policy"
    deadline = time.monotonic() + 60
    while not [p for p in held.rglob("*") if p.is_file()]:
        assert time.monotonic() < deadline, postfix.log_text()[-3000:]
        time.sleep(0.2)
    postfix.wait_queue_empty(timeout=60)
    assert "status=bounced" not in postfix.log_text()


@needs_postfix
def test_postfix_milter_lines(through_postfix: object) -> None:
    postfix = through_postfix("milter", "milter", 3333)  # type: ignore[operator]
    assert send(postfix.inbound_port, "alice@example.test", "hello", "clean") == (250, "")
    postfix.wait_delivered("bob@example.test", timeout=60)
    code, text = send(postfix.inbound_port, "alice@example.test", EICAR, "virus")
    assert code == 550, text  # refused during DATA, before Postfix accepts it


@needs_postfix
def test_postfix_lmtp_lines(through_postfix: object) -> None:
    postfix = through_postfix("lmtp", "lmtp", 10024)  # type: ignore[operator]
    assert send(postfix.inbound_port, "alice@example.test", "hello over lmtp", "lmtp") == (250, "")
    [delivered] = postfix.wait_delivered("bob@example.test", timeout=60)
    assert "hello over lmtp" in delivered.read_text()


@needs_postfix
def test_postfix_policy_lines_greylist_strangers_not_own_networks(through_postfix: object) -> None:
    """Finding 10: with the README's order, mynetworks is never greylisted; other clients are."""
    own = through_postfix("policy", "policy", 10031)  # type: ignore[operator]
    assert send(own.inbound_port, "alice@example.test", "from our own network") == (250, "")
    own.wait_delivered("bob@example.test", timeout=60)
    # The same lines where 127.0.0.1 is not one of our networks: greylisted.
    stranger = through_postfix("policy", "policy", 10031, mynetworks="192.0.2.0/24")  # type: ignore[operator]
    code, text = send(stranger.inbound_port, "carol@elsewhere.example", "from a stranger")
    assert code == 450, text
    assert "Greylisted" in text


def test_every_shell_block_has_a_runner_here() -> None:
    """A shell block no test above runs would pass unseen: each is one of the three kinds."""
    handled = {b.line for b in SERVED_SHELL + CONFIGURED_SHELL}
    handled |= {readme.named("quickstart-release").line, readme.named("quickstart-admin").line}
    assert {b.line for b in readme.of_kind("shell")} == handled
