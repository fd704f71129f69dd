"""The Debian package (scripts/build-deb.sh): install, units, serve as the unit starts it (its clamd
as clamav, not root), the upgrade to the next version over it (data, an edited conffile and the
schema migration on start), remove, purge; and the postinst's own logic (the system user created
when missing, clamav's way into the state directory) run with stand-in commands.

The install tests need root and dpkg (skipped otherwise, with the reason). They build the package
of this checkout (DEB_VERSION=<version>-1, gzip: about 1.5 minutes on a loaded 2-core machine)
unless MAILSIFT_DEB names a prebuilt one; the next version is that package repacked with a
higher Version (and a changed /etc/default/mailsift), which is what dpkg sees of an upgrade. They
install into the real system (/opt/mailsift, /etc/mailsift, /var/lib/mailsift) and purge it in
a ``finally``; they refuse to run where mailsift is already installed or those paths exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shlex
import shutil
import signal
import smtplib
import socket
import sqlite3
import stat
import subprocess
import time
import tomllib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.helpers.samples import EICAR

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = Path("/lib/systemd/system")
UNITS = ["mailsift.service", "mailsift-expire.service", "mailsift-expire.timer"]
UNITS += ["mailsift-report.service", "mailsift-report.timer"]
STATE = Path("/var/lib/mailsift")
ETC = Path("/etc/mailsift")
F2B_FILTER = Path("/etc/fail2ban/filter.d/mailsift-webq.conf")
# The ports of the bundled default config, which the package installs unchanged but for STATE_DIR.
SMTP_PORT, SPAMD_PORT = 10024, 10783
# What systemd gives a service: no inherited environment (not the tests' MAILSIFT_USER=).
SERVE_LOG = Path("/tmp/mailsift-package-serve.log")
SERVICE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return "ok installed" in result.stdout or "config-files" in result.stdout


def _port_busy(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _why_not() -> str:
    if os.geteuid() != 0:
        return "installs a Debian package: needs root"
    if not (shutil.which("dpkg") and shutil.which("dpkg-deb")):
        return "needs dpkg and dpkg-deb (a Debian system)"
    if _installed("mailsift"):
        return "a mailsift package is installed here: this test would purge it"
    if STATE.exists() or ETC.exists():
        return f"{STATE} or {ETC} exists without the package: purging would delete it"
    busy = [port for port in (SMTP_PORT, SPAMD_PORT) if _port_busy(port)]
    if busy:
        return f"the default config's ports {busy} are in use on 127.0.0.1"
    return ""


pytestmark = [pytest.mark.integration]
needs_install = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "-")
POSTINST = ROOT / "packaging" / "debian" / "DEBIAN" / "postinst"


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def machine() -> Iterator[None]:
    """This machine's dpkg database and /etc, /var/lib/mailsift, for this module alone: under
    pytest-xdist two workers may run tests of this module at once (each builds, installs and
    purges the package), and dpkg's lock or a purge under the other's feet fails them."""
    with open("/tmp/mailsift-package-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def deb(machine: None) -> Path:
    given = os.environ.get("MAILSIFT_DEB")
    if given:
        return Path(given)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    env = {**os.environ, "DEB_VERSION": f"{project}-1", "DEB_COMPRESS": "gzip"}  # gzip: faster to pack
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-deb.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    path = ROOT / built.stdout.strip().splitlines()[-1]
    assert path.name.startswith(f"mailsift_{project}-1_"), built.stdout
    assert path.suffix == ".deb", built.stdout
    assert deb_field(path, "Version") == f"{project}-1"  # DEB_VERSION
    return path


def next_version(deb: Path, work: Path) -> Path:
    """The package of the next release: ``deb`` repacked with a higher Version and a changed
    /etc/default/mailsift (what dpkg sees of an upgrade; the venv is the same)."""
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    version = deb_field(deb, "Version") + "+1"
    control = tree / "DEBIAN" / "control"
    lines = control.read_text().splitlines(keepends=True)
    control.write_text("".join(f"Version: {version}\n" if line.startswith("Version:") else line for line in lines))
    default = tree / "etc" / "default" / "mailsift"
    default.write_text(default.read_text() + "# a new option of the next release\n")
    path = work / f"mailsift_{version}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(path)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
    return path


def exec_start(unit: Path) -> list[str]:
    """The ExecStart= command line of a unit, as systemd splits it (no prefixes, no variables used here)."""
    lines = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def send(message: EmailMessage, deadline: float) -> tuple[int, bytes]:
    """Send through the installed gateway, retrying 4xx (spamd may still be starting) until the deadline."""
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=60) as client:
                client.send_message(message)
                return 250, b""
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused, OSError) as error:
            code = getattr(error, "smtp_code", 0)
            if time.monotonic() > deadline or 500 <= code < 600:
                return code, getattr(error, "smtp_error", str(error).encode())
            time.sleep(1)


def mail(subject: str, attachment: bytes | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "alice@example.test", "bob@example.test", subject
    message.set_content(f"{subject}: a test through the installed package.\n")
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="eicar.com")
    return message


@pytest.fixture
def serve() -> Iterator[subprocess.Popen[bytes]]:
    with serving() as process:
        yield process


@contextlib.contextmanager
def serving() -> Iterator[subprocess.Popen[bytes]]:
    """`mailsift serve` started exactly as mailsift.service's ExecStart says, as root, from /."""
    argv = exec_start(UNIT_DIR / "mailsift.service")
    assert argv == ["/usr/bin/mailsift", "serve", "-c", "/etc/mailsift/config.py"]
    log = open(SERVE_LOG, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        argv, cwd="/", env=SERVICE_ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not _port_busy(SMTP_PORT):
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.3)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def mailsift(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command, as an admin runs it (root; state commands become USER)."""
    return subprocess.run(
        ["/usr/bin/mailsift", *args, "-c", "/etc/mailsift/config.py"],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        env=SERVICE_ENV,
        cwd="/",
    )


def clamav_user() -> pwd.struct_passwd | None:
    """Debian's clamav (user and group), whom the postinst lets into the state directory, if here."""
    try:
        grp.getgrnam("clamav")
        return pwd.getpwnam("clamav")
    except KeyError:
        return None


def as_user(user: str, *argv: str) -> int:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, check=False).returncode


def clamd_uids() -> set[int]:
    """The real uids of the clamd processes running on the installed package's clamd.conf."""
    uids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"clamd") and str(STATE / "clamd" / "clamd.conf").encode() in argv:
                status = Path(f"/proc/{pid}/status").read_text()
                uids.add(int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]))
    return uids


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """The package installed with dpkg -i; removed (data kept) then purged (data gone, user kept) after."""
    result = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, check=False)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        yield deb
        (STATE / "kept-by-remove").write_text("data\n")
        removed = subprocess.run(["dpkg", "-r", "mailsift"], capture_output=True, text=True, check=False)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not Path("/usr/bin/mailsift").exists()
        assert not Path("/opt/mailsift").exists()
        assert (STATE / "kept-by-remove").is_file(), "remove kept no data"
        assert (ETC / "config.py").is_file(), "remove kept no config"
    finally:
        purged = subprocess.run(["dpkg", "--purge", "mailsift"], capture_output=True, text=True, check=False)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not _installed("mailsift")
    assert not STATE.exists(), "purge kept the data"
    assert not ETC.exists(), "purge kept the config"
    assert not F2B_FILTER.exists(), "purge kept the fail2ban filter"
    assert not list(Path("/etc/default").glob("mailsift*")), "purge kept /etc/default/mailsift"
    assert pwd.getpwnam("mailsift"), "purge removed the system user"


@needs_install
def test_package_installs_serves_and_purges(installed: Path, serve: subprocess.Popen[bytes]) -> None:
    user = pwd.getpwnam("mailsift")
    assert user.pw_shell == "/usr/sbin/nologin"
    assert user.pw_uid < 1000
    info = STATE.stat()
    clamav = clamav_user()
    if clamav is None:
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o750, user.pw_uid, user.pw_gid)
    else:
        # clamav may pass (to its clamd directory), not list; its group is not mailsift's
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o710, user.pw_uid, clamav.pw_gid)
        assert "clamav" not in grp.getgrnam("mailsift").gr_mem
        assert as_user("clamav", "test", "-x", str(STATE)) == 0
        assert as_user("clamav", "ls", str(STATE)) != 0
        assert as_user("clamav", "test", "-r", "/etc/mailsift/config.py") != 0
    config = ETC / "config.py"
    assert 'STATE_DIR = "/var/lib/mailsift"' in config.read_text()
    assert (stat.S_IMODE(config.stat().st_mode), grp.getgrgid(config.stat().st_gid).gr_name) == (0o640, "mailsift")
    conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "mailsift"], capture_output=True, text=True)
    assert "/etc/mailsift/config.py" in conffiles.stdout
    assert os.readlink("/usr/bin/mailsift") == "/opt/mailsift/bin/mailsift"

    # the mail: a clean one delivered into STATE_DIR's Maildir, a virus quarantined
    deadline = time.monotonic() + 90
    assert send(mail("clean"), deadline) == (250, b"")
    assert send(mail("virus", EICAR), deadline) == (250, b"")
    delivered = list((STATE / "mail" / "bob@example.test" / "new").iterdir())
    assert [path for path in delivered if b"Subject: clean" in path.read_bytes()], delivered
    quarantined = list((STATE / "quarantine" / "virus" / "new").iterdir())
    assert [path for path in quarantined if b"Subject: virus" in path.read_bytes()], quarantined
    # written by the workers, which run as mailsift
    assert {path.stat().st_uid for path in delivered + quarantined} == {user.pw_uid}
    if clamav is not None:  # the virus was found by the package's own clamd, which runs as clamav
        assert clamd_uids() == {clamav.pw_uid}
        assert "clamd runs as root" not in SERVE_LOG.read_text()
        # clamav-daemon installed after mailsift: the file trigger on /usr/sbin/clamd lets clamav pass again
        os.chown(STATE, user.pw_uid, user.pw_gid)
        os.chmod(STATE, 0o750)
        subprocess.run(["dpkg-trigger", "--no-await", "--by-package=clamav-daemon", "/usr/sbin/clamd"], check=True)
        subprocess.run(["dpkg", "--triggers-only", "mailsift"], check=True, capture_output=True)
        assert (stat.S_IMODE(STATE.stat().st_mode), STATE.stat().st_gid) == (0o710, clamav.pw_gid)


@needs_install
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian's systemd)")
def test_package_units_verify(installed: Path) -> None:
    units = [str(UNIT_DIR / unit) for unit in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "mailsift" in line] == []
    assert exec_start(UNIT_DIR / "mailsift-expire.service")[:4] == ["/usr/bin/mailsift", "quarantine", "expire", "-c"]
    assert exec_start(UNIT_DIR / "mailsift-report.service")[:3] == ["/usr/bin/mailsift", "report", "-c"]
    enabled = Path("/etc/systemd/system/multi-user.target.wants/mailsift.service")
    assert enabled.is_symlink(), "the service is not enabled on first install"


@needs_install
@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="needs fail2ban-regex (Debian's fail2ban)")
def test_package_fail2ban_filter(installed: Path, tmp_path: Path) -> None:
    log = tmp_path / "mailsift.log"
    log.write_text(
        "2025-01-02 03:04:05,678 mailsift.webq[123] WARNING webq: login failed for admin from 192.0.2.7\n"
        # a name typed as "x from 10.9.9.9" is logged with its spaces as "?" (web/auth.py)
        "2025-01-02 03:04:06,000 mailsift.webq[123] WARNING webq: login failed for x?from?10.9.9.9 "
        "from 2001:db8::5\n"
        "2025-01-02 03:04:07,000 mailsift.webq[123] INFO webq: login ok for admin from 192.0.2.8\n"
    )
    result = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(log), str(F2B_FILTER)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["192.0.2.7", "2001:db8::5"]


@needs_install
def test_package_upgrade_keeps_data_and_edited_config_and_migrates(installed: Path, tmp_path: Path) -> None:
    """Version A installed and in use (a quarantined virus, a web user, an edited config) and its
    schema one revision behind this release's; then the next version installed over it."""
    added = mailsift("user", "add", "upgrader", "--admin", "--password-stdin", input="a-long-password\n")
    assert added.returncode == 0, added.stdout + added.stderr
    with serving():
        assert send(mail("virus before the upgrade", EICAR), time.monotonic() + 90) == (250, b"")
    held = [p for p in (STATE / "quarantine" / "virus" / "new").iterdir() if b"before the upgrade" in p.read_bytes()]
    assert held
    config = ETC / "config.py"
    config.write_text(config.read_text() + "\n# edited by the admin\n")
    default = Path("/etc/default/mailsift")
    default.write_text(default.read_text().replace("--older-than 30d", "--older-than 60d"))
    # the schema as the previous release left it: without 0010_websessions (table and revision)
    with sqlite3.connect(STATE / "mailsift.db") as connection:
        connection.execute("DELETE FROM alembic_version WHERE version_num = '0010_websessions'")
        connection.execute("DROP TABLE web_session")
    connection.close()
    before = mailsift("db", "current").stdout
    assert "0010_websessions" in before.splitlines()[-1], before  # pending (run db upgrade): 0010_websessions

    newer = next_version(installed, tmp_path)
    upgraded = subprocess.run(
        ["dpkg", "--force-confold", "-i", str(newer)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    status = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "mailsift"], capture_output=True, text=True)
    assert status.stdout == deb_field(newer, "Version")
    # data and config survive: the admin's edits kept (the package's changed default beside it)
    assert all(path.is_file() for path in held)
    assert config.read_text().endswith("# edited by the admin\n")
    assert "--older-than 60d" in default.read_text()
    assert "a new option of the next release" in Path("/etc/default/mailsift.dpkg-dist").read_text()
    # serve starts on it and migrates; the quarantine and the user are there
    with serving():
        current = mailsift("db", "current")
        assert "  0010_websessions: " in current.stdout, current.stdout + current.stderr
        assert current.stdout.rstrip().endswith("up to date"), current.stdout
        listed = mailsift("quarantine", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "before the upgrade" in listed.stdout
        users = mailsift("user", "list")
        assert "upgrader" in users.stdout, users.stdout + users.stderr
    with sqlite3.connect(STATE / "mailsift.db") as connection:
        assert connection.execute("SELECT count(*) FROM web_session").fetchone() == (0,)
    connection.close()


# --------------------------------------------------------------------------- the postinst, with stand-ins

FAKE = """#!/bin/sh
echo "${0##*/} $*" >>"$LOG"
case "${0##*/} $*" in
    "getent passwd mailsift") [ -n "$USER_EXISTS" ] || grep -q "^adduser " "$LOG" ;;
    "getent group mailsift") [ -n "$GROUP_EXISTS" ] || grep -q "^adduser \\|^addgroup " "$LOG" ;;
    "getent group clamav") [ -n "$CLAMAV" ] ;;
    "stat "*) echo "$STAT" ;;
    "dpkg-statoverride --list "*) exit 1 ;;
esac
"""
COMMANDS = ["getent", "adduser", "addgroup", "install", "chown", "chmod", "chgrp", "stat", "dpkg-statoverride"]
COMMANDS += ["deb-systemd-helper", "deb-systemd-invoke", "systemctl", "grep"]


def run_postinst(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """The package's postinst with every command it runs replaced by a stand-in that logs its
    arguments (PATH holds only those): nothing on this machine changes. Its state directory is
    a temporary one (the one line naming it rewritten). Returns the commands run, in order."""
    bin_dir, log = tmp_path / "bin", tmp_path / "commands.log"
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")
    for name in COMMANDS:
        (bin_dir / name).write_text(FAKE if name != "grep" else f'#!/bin/sh\nexec {shutil.which("grep")} "$@"\n')
        (bin_dir / name).chmod(0o755)
    text = POSTINST.read_text()
    assert text.count("STATE=/var/lib/mailsift\n") == 1
    script = tmp_path / "postinst"
    script.write_text(text.replace("STATE=/var/lib/mailsift\n", f"STATE={tmp_path / 'state'}\n"))
    done = subprocess.run(
        ["/bin/sh", str(script), *args],
        env={"PATH": str(bin_dir), "LOG": str(log), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line for line in log.read_text().splitlines() if not line.startswith("grep ")]


def test_postinst_creates_the_system_user_when_it_is_missing(tmp_path: Path) -> None:
    commands = run_postinst(tmp_path, "configure", "")
    adduser = [line for line in commands if line.startswith("adduser ")]
    assert adduser == [
        "adduser --system --group --quiet --home /var/lib/mailsift --no-create-home "
        "--shell /usr/sbin/nologin --gecos mailsift gateway mailsift"
    ]
    # then the state directory, owned by it, and the config readable by its group
    made = commands.index(f"install -d -m 0750 -o mailsift -g mailsift {tmp_path / 'state'}")
    assert commands.index(adduser[0]) < made
    assert "chown root:mailsift /etc/mailsift/config.py" in commands
    assert not [line for line in commands if line.startswith(("addgroup ", "userdel ", "deluser "))]


def test_postinst_keeps_an_existing_user_and_adds_a_missing_group(tmp_path: Path) -> None:
    commands = run_postinst(tmp_path, "configure", "0.1.0-1", USER_EXISTS="1", GROUP_EXISTS="1")
    assert not [line for line in commands if line.startswith(("adduser ", "addgroup "))]
    commands = run_postinst(tmp_path, "configure", "0.1.0-1", USER_EXISTS="1")
    assert [line for line in commands if line.startswith(("adduser ", "addgroup "))] == [
        "addgroup --system --quiet mailsift"
    ]


def test_postinst_lets_clamav_pass_into_the_state_directory_only(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    state = str(tmp_path / "state")
    changes = [f"chgrp clamav {state}", f"chmod 0710 {state}"]
    # as the postinst made it: clamav may pass (on configure and on the trigger of clamav-daemon's clamd)
    for args in (("configure", ""), ("triggered", "/usr/sbin/clamd")):
        commands = run_postinst(
            tmp_path, *args, USER_EXISTS="1", GROUP_EXISTS="1", CLAMAV="1", STAT="mailsift:mailsift:750"
        )
        assert [line for line in commands if line.startswith(("chgrp ", "chmod 0710"))] == changes, args
    # no clamav on this machine, or the admin changed the directory: left alone
    for env in ({"STAT": "mailsift:mailsift:750"}, {"CLAMAV": "1", "STAT": "mailsift:adm:750"}):
        commands = run_postinst(tmp_path, "configure", "", USER_EXISTS="1", GROUP_EXISTS="1", **env)
        assert not [line for line in commands if line.startswith(("chgrp ", "chmod 0710"))], env
