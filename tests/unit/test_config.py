"""Loading config files: a good one, and every kind of broken one, reported with file and line."""

from __future__ import annotations

import functools
import gc
import socket
import textwrap
from pathlib import Path

import pytest

from mailsift import config
from mailsift.errors import ConfigError
from mailsift.message.mail import Envelope, Mail
from mailsift.scanners.actions import quarantine, reject
from mailsift.scanners.base import MailTarget, Scanner
from mailsift.services.smtpd import smtpd
from mailsift.storage.policies import add_listed, set_policy


def write(tmp_path: Path, body: str, name: str = "mailsift.conf.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return str(path)


GOOD = """
from mailsift import *

STATE_DIR = {state!r}
SPOOL_THRESHOLD = 4096
SMTP_SERVER = ('127.0.0.1', 10025)
SCANNERS = [
    quarantine('virus', parsemail(regexp_scan([('EICAR-Test', r'EICAR-STANDARD-ANTIVIRUS-TEST-FILE')]))),
    reject(parsemail(mime_ext(r'\\.exe$')), message='no %V'),
]
SRV = [smtpd(SCANNERS, '127.0.0.1', 10024)]
"""


def test_a_good_config_loads(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(state=str(tmp_path / "state")))
    loaded = config.load(path)
    assert loaded.path == path
    assert loaded.settings.state_dir == str(tmp_path / "state")
    assert loaded.settings.spool_threshold == 4096
    assert loaded.settings.smtp_server == ("127.0.0.1", 10025)
    assert [type(s) for s in loaded.scanners] == [quarantine, reject]
    assert len(loaded.services) == 1
    service = loaded.services[0]
    assert isinstance(service, smtpd)
    assert (service.host, service.port) == ("127.0.0.1", 10024)
    assert service.scanners == loaded.scanners
    assert not (tmp_path / "state").exists()  # loading writes nothing


def test_the_bundled_default_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAILSIFT_STATE_DIR", str(tmp_path))
    loaded = config.load(config.DEFAULT_CONFIG)
    assert loaded.settings.state_dir == str(tmp_path)
    assert len(loaded.scanners) == 5  # Build 10: listed() first, then the four content rules
    assert loaded.scanners[0].name == "listed"
    assert [s.describe() for s in loaded.services] == ["smtpd(127.0.0.1:10024)", "webq(127.0.0.1:10080)"]
    assert [h.name for h in loaded.settings.hooks] == ["log_sql", "stats"]
    assert loaded.settings.database is not None
    assert loaded.settings.database.describe() == f"sqlite:///{tmp_path}/mailsift.db"
    clamd_socket = f"{tmp_path}/clamd/clamd.sock"
    assert [d.describe() for d in loaded.daemons] == [f"clamd_daemon({clamd_socket})", "spamd_daemon(127.0.0.1:10783)"]


def test_a_relative_state_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "STATE_DIR = 'var'\nSCANNERS = []\n")
    assert config.load(path).settings.state_dir == str(tmp_path / "var")


def test_a_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        from mailsift import *

        SCANNERS = [
            const(1.0, 'x'
        SRV = []
        """,
    )
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert error.value.filename == path
    assert error.value.lineno == 4  # the unclosed bracket
    assert str(error.value).startswith(f"{path}:4: syntax error")


def test_a_syntax_error_on_a_later_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a = 1\nb = 2\nc = = 3\n")
    with pytest.raises(ConfigError, match=r":3: syntax error: invalid syntax") as error:
        config.load(path)
    assert (error.value.filename, error.value.lineno) == (path, 3)


def test_a_bad_argument_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        from mailsift import *

        SCANNERS = [
            regexp_scan([('x', '(')]),
        ]
        """,
    )
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert error.value.lineno == 4
    assert "bad pattern for 'x'" in error.value.message
    assert str(error.value).startswith(f"{path}:4: regexp_scan")


def test_a_bad_argument_on_line_5(tmp_path: Path) -> None:
    path = write(tmp_path, "from mailsift import *\n\n# comment\nOK = nothing()\nX = regexp_scan([('x', '(')])\n")
    with pytest.raises(ConfigError, match=r":5: regexp_scan: bad pattern") as error:
        config.load(path)
    assert (error.value.filename, error.value.lineno) == (path, 5)


def test_a_typo_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "from mailsift import *\n\nSCANNERS = [\n    parsemial(nothing()),\n]\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert error.value.lineno == 4
    assert "NameError" in error.value.message
    assert "parsemial" in error.value.message


def test_an_error_in_a_helper_function_names_the_calling_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        from mailsift import *

        def policy(pattern):
            return mime_ext(pattern)

        SCANNERS = [policy('[')]
        """,
    )
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert error.value.lineno == 4  # the innermost line of the config file


def test_scanners_must_be_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "from mailsift import *\nSCANNERS = nothing()\n")
    with pytest.raises(ConfigError, match="SCANNERS must be a list of scanners") as error:
        config.load(path)
    assert error.value.filename == path


def test_scanners_must_hold_scanners(tmp_path: Path) -> None:
    path = write(tmp_path, "from mailsift import *\nSCANNERS = [nothing(), 'clamd']\n")
    with pytest.raises(ConfigError, match=r"SCANNERS must be a list of scanners, got .*'clamd'"):
        config.load(path)


def test_srv_must_be_a_list_of_services(tmp_path: Path) -> None:
    path = write(tmp_path, "SRV = ('127.0.0.1', 10024)\n")
    with pytest.raises(ConfigError, match="SRV must be a list of services"):
        config.load(path)


def test_two_services_on_the_same_port(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        from mailsift import *
        STATE_DIR = {str(tmp_path)!r}
        SMTP_SERVER = ('127.0.0.1', 10025)
        SCANNERS = [nothing()]
        SRV = [smtpd(SCANNERS, '127.0.0.1', 10024), smtpd(SCANNERS, '127.0.0.1', 10024)]
        """,
    )
    with pytest.raises(ConfigError, match=r"two services listen on 127\.0\.0\.1:10024") as error:
        config.load(path)
    assert error.value.filename == path


def test_a_service_without_a_next_hop(tmp_path: Path) -> None:
    path = write(tmp_path, "from mailsift import *\nSRV = [smtpd([nothing()], '127.0.0.1', 10024)]\n")
    with pytest.raises(ConfigError, match="no next hop"):
        config.load(path)


def test_a_bad_service_argument_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "from mailsift import *\n\nSRV = [smtpd([nothing()], '127.0.0.1', 99999)]\n")
    with pytest.raises(ConfigError, match="port must be an integer") as error:
        config.load(path)
    assert error.value.lineno == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("STATE_DIR = ''\n", "STATE_DIR must be a directory path"),
        ("STATE_DIR = 5\n", "STATE_DIR must be a directory path"),
        ("SPOOL_THRESHOLD = '1M'\n", "SPOOL_THRESHOLD must be a number of bytes"),
        ("SPOOL_THRESHOLD = -1\n", "SPOOL_THRESHOLD must be a number of bytes"),
    ],
)
def test_bad_settings(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(write(tmp_path, body))


def test_a_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.py")
    with pytest.raises(ConfigError, match="cannot read config") as error:
        config.load(path)
    assert error.value.filename == path
    assert str(error.value).startswith(f"{path}: ")


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.py"
    path.write_bytes(b"# caf\xe9\nSCANNERS = []\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(path))


def test_any_exception_in_the_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "x = 1\ny = {}['missing']\n")
    with pytest.raises(ConfigError, match="KeyError") as error:
        config.load(path)
    assert error.value.lineno == 2


# --------------------------------------------------------------------------- a rejected config leaves nothing behind

RUNNING = """
from mailsift import *

STATE_DIR = {state!r}
DATABASE = db.sqlite({database!r})
SMTP_SERVER = ('127.0.0.1', 10025)
SCANNERS = [whitelisted(), policy_enabled('clam', const(1.0, 'Scanned-By-Policy'))]
SRV = [smtpd(SCANNERS, '127.0.0.1', 10024)]
"""

REJECTED = """
from mailsift import *

STATE_DIR = {state!r}
DATABASE = db.sqlite({database!r})
{next_hop}
SCANNERS = [whitelisted(), policy_enabled('clam', const(1.0, 'Scanned-By-Policy'))]
HOOKS = [{hooks}]
SRV = [{services}]
{tail}
"""
"""A config with its own DATABASE and policy scanners, which fails a check after DATABASE is read."""

LATE_FAILURES = {
    "hook check": ({"hooks": "log_file('/nonexistent-mailsift-dir/mail.log')"}, "log_file: directory", 7),
    "service check": ({"next_hop": ""}, "no next hop", 8),
    "two services on one port": (
        {"services": "smtpd(SCANNERS, '127.0.0.1', 10026), smtpd(SCANNERS, '127.0.0.1', 10026)"},
        "two services listen on",
        8,
    ),
    "daemon check": (
        {"services": "smtpd(SCANNERS, '127.0.0.1', 10026), chroot_execvp('/nonexistent/mailsift-no-such-program')"},
        "not found",
        8,
    ),
    "SystemExit in the file": ({"tail": "raise SystemExit(3)"}, "SystemExit: 3", 9),
    "an exception on the last line": ({"tail": "{}['missing']"}, "KeyError", 9),
}


def rejected_config(state: Path, database: Path, **parts: str) -> str:
    values = {
        "next_hop": "SMTP_SERVER = ('127.0.0.1', 10025)",
        "hooks": "",
        "services": "smtpd(SCANNERS, '127.0.0.1', 10026)",
        "tail": "",
    }
    values.update(parts)
    return REJECTED.format(state=str(state), database=str(database), **values)


def config_objects() -> list[object]:
    """Every live object of the kinds a config is made of (after a full collection)."""
    from mailsift.core.hooks import Hook
    from mailsift.scanners.base import Scanner
    from mailsift.services.base import Service
    from mailsift.services.daemons import Daemon
    from mailsift.settings import Settings
    from mailsift.storage.db import Database

    kinds = (config.Config, Settings, Database, Scanner, Service, Daemon, Hook)
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kinds)]


def mail_from(sender: str) -> Mail:
    return Mail(
        Envelope(sender=sender, recipients=["bob@example.test"], client_address="192.0.2.1"), b"Subject: t\r\n\r\nx\r\n"
    )


async def verdicts(scanners: tuple[Scanner, ...], sender: str) -> list[str]:
    target = MailTarget(mail_from(sender))
    return [(await scanner.scan(target)).name for scanner in scanners]


@pytest.mark.parametrize("failure", LATE_FAILURES, ids=list(LATE_FAILURES))
async def test_a_rejected_config_leaves_nothing_behind(tmp_path: Path, failure: str) -> None:
    """Config A runs; the file is changed to B, which fails a late check: A's scanners keep A's DATABASE,
    B's database is never opened, and no object of B stays reachable."""
    parts, message, lineno = LATE_FAILURES[failure]
    state, a_db, b_db = tmp_path / "state", tmp_path / "a.db", tmp_path / "b.db"
    path = write(tmp_path, RUNNING.format(state=str(state), database=str(a_db)))
    running = config.load(path)
    database = running.settings.database
    assert database is not None
    database.call(
        functools.partial(add_listed, list_name="white", list_field="sender", value="friend@example.test", now=1.0)
    )
    database.call(set_policy, "", "clam=yes", 1.0)
    assert await verdicts(running.scanners, "friend@example.test") == ["Whitelisted", "Scanned-By-Policy"]
    assert await verdicts(running.scanners, "x@y.test") == ["", "Scanned-By-Policy"]
    before = {id(o) for o in config_objects()}

    write(tmp_path, rejected_config(state, b_db, **parts))
    problem = ""
    try:
        config.load(path)
    except ConfigError as error:
        problem = str(error)

    leftovers = [o for o in config_objects() if id(o) not in before]
    assert leftovers == [], f"objects of the rejected config still reachable: {leftovers}"
    assert await verdicts(running.scanners, "friend@example.test") == ["Whitelisted", "Scanned-By-Policy"]
    assert await verdicts(running.scanners, "x@y.test") == ["", "Scanned-By-Policy"]
    assert not b_db.exists()  # the rejected config's DATABASE was never opened
    assert problem.startswith(f"{path}:{lineno}: "), problem
    assert message in problem
    database.dispose()


async def test_policy_scanners_use_the_database_of_the_config_that_holds_them(tmp_path: Path) -> None:
    """Two accepted configs in one process: each one's scanners use its own DATABASE."""
    first = config.load(write(tmp_path, RUNNING.format(state=str(tmp_path), database=str(tmp_path / "1.db")), "1.py"))
    second = config.load(write(tmp_path, RUNNING.format(state=str(tmp_path), database=str(tmp_path / "2.db")), "2.py"))
    for loaded in (first, second):
        assert loaded.settings.database is not None
    first.settings.database.call(set_policy, "", "clam=yes", 1.0)  # type: ignore[union-attr]
    assert await verdicts(first.scanners, "x@y.test") == ["", "Scanned-By-Policy"]
    assert await verdicts(second.scanners, "x@y.test") == ["", ""]
    for loaded in (first, second):
        loaded.settings.database.dispose()  # type: ignore[union-attr]


def test_the_hostname_is_found_when_the_config_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "mx.example.test")
    assert config.load(write(tmp_path, "SCANNERS = []\n")).settings.hostname == "mx.example.test"


@pytest.mark.parametrize("value", ["'db'", "'Database'", "None", "['files']"])
def test_a_bad_quarantine_store_is_a_config_error(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"from mailsift import *\nSTATE_DIR = {str(tmp_path)!r}\nQUARANTINE_STORE = {value}\n")
    with pytest.raises(ConfigError, match=r"QUARANTINE_STORE must be 'files' or 'database', got ") as error:
        config.load(path)
    assert error.value.filename == path


@pytest.mark.parametrize("value", ["files", "database"])
def test_quarantine_store_files_or_database(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"from mailsift import *\nSTATE_DIR = {str(tmp_path)!r}\nQUARANTINE_STORE = {value!r}\n")
    loaded = config.load(path)
    assert loaded.settings.quarantine_store == value
    assert config.load(write(tmp_path, "from mailsift import *\n", "bare.py")).settings.quarantine_store == "files"


def test_the_fingerprint_is_equal_for_equal_configs_and_differs_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 5: two nodes with the same file (anywhere) report one fingerprint; a changed
    setting, or another mailsift release (other bundled defaults), gives another."""
    state = str(tmp_path / "state")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = config.load(write(tmp_path / "a", GOOD.format(state=state)))
    b = config.load(write(tmp_path / "b", GOOD.format(state=state)))
    changed = config.load(write(tmp_path, GOOD.format(state=state).replace("4096", "8192"), "other.py"))
    assert len(a.settings.config_fingerprint) == 12
    assert a.settings.config_fingerprint == b.settings.config_fingerprint
    assert changed.settings.config_fingerprint != a.settings.config_fingerprint
    monkeypatch.setattr(config, "__version__", "99.0")
    assert config.load(a.path).settings.config_fingerprint != a.settings.config_fingerprint
