"""Loading config files: a good one, and every kind of broken one, reported with file and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mailsift import config
from mailsift.errors import ConfigError
from mailsift.scanners.actions import quarantine, reject
from mailsift.services.smtpd import smtpd


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
    assert len(loaded.scanners) == 4
    assert [s.describe() for s in loaded.services] == ["smtpd(127.0.0.1:10024)"]
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
