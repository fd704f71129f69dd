"""SAGATOR's module names in a config (mailsift.compat.sagator): resolved by the loader only,
mapped to mailsift's objects, and every gone engine named with its replacement."""

from __future__ import annotations

import asyncio
import builtins
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import mailsift
from mailsift import config as config_module
from mailsift.cli.main import main
from mailsift.compat import sagator
from mailsift.errors import ConfigError
from mailsift.message.mail import Mail
from mailsift.reporting.counters import stats
from mailsift.reporting.logline import log_file, log_sql, log_syslog
from mailsift.reporting.notifications import notify
from mailsift.scanners.base import MailTarget
from mailsift.scanners.engines.clamav import clamd
from mailsift.scanners.engines.command import clamscan
from mailsift.services.base import Service
from mailsift.web.service import webq
from tests.helpers.paths import REPO

HEAD = "from srv import *\nfrom scanners import *\n"


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSIFT_STATE_DIR", str(tmp_path / "state"))


def write(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    path = tmp_path / "sagator.conf"
    path.write_text(head + body, encoding="utf-8")
    return path


def load(tmp_path: Path, body: str, head: str = HEAD) -> config_module.Config:
    return config_module.load(str(write(tmp_path, body, head)))


def error_of(tmp_path: Path, body: str, head: str = HEAD) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, body, head)
    return str(caught.value)


# --------------------------------------------------------------------------- the modules: for configs only


def test_srv_and_scanners_are_no_installed_modules() -> None:
    for name in sagator.MODULES:
        if name == "db":
            continue
        with pytest.raises(ModuleNotFoundError):
            __import__(name)


def test_a_sagator_config_loads_and_leaves_no_module_behind(tmp_path: Path) -> None:
    real_import = builtins.__import__
    config = load(tmp_path, "import db\nfrom avlib import *\nSCANNERS = [parsemail(clamav(['localhost', 3310]))]\n")
    assert isinstance(config.scanners[0].children[0], clamd)
    assert builtins.__import__ is real_import
    assert not {"srv", "scanners", "avlib", "db"} & set(sys.modules)
    with pytest.raises(ModuleNotFoundError):
        import srv  # type: ignore[import-not-found]  # noqa: F401


def test_each_load_gets_its_own_modules(tmp_path: Path) -> None:
    """A config that changes a module of SAGATOR's does not change the next config's."""
    load(tmp_path, "import scanners\nscanners.clamd = None\n")
    config = load(tmp_path, "SCANNERS = [clamd(['localhost', 3310])]\n")
    assert isinstance(config.scanners[0], clamd)


def test_the_loader_and_the_layer_agree_on_sagators_module_names() -> None:
    assert config_module.SAGATOR_MODULES == sagator.TRIGGERS
    assert set(sagator.MODULES) == sagator.TRIGGERS | {"db"}


def test_srv_holds_the_services_and_scanners_the_scanners() -> None:
    made = sagator.modules()
    srv, scanners = vars(made["srv"]), vars(made["scanners"])
    assert {"smtpd", "lmtpd", "milter", "collector", "http_proxy", "webq_jinja", "reporter", "scand"} <= set(srv)
    assert {"clamav", "clamd", "parsemail", "log", "report", "mime_ext", "nod2"} <= set(scanners)
    assert "smtpd" not in made["scanners"].__all__
    assert set(made["avlib"].__all__) == set(made["srv"].__all__) | set(made["scanners"].__all__)
    assert made["db"] is mailsift.db


def test_a_submodule_of_sagator_is_refused_with_what_to_write(tmp_path: Path) -> None:
    message = error_of(tmp_path, "from scanners.clamav import clamd\n", head="")
    assert message == (
        f"{tmp_path / 'sagator.conf'}:1: ImportError: SAGATOR's module scanners.clamav is not provided: "
        "use from scanners import *"
    )


def test_a_native_config_never_imports_the_compat_layer(tmp_path: Path) -> None:
    native = tmp_path / "native.py"
    native.write_text("from mailsift import *\nSCANNERS = [clamd(['localhost', 3310])]\n", encoding="utf-8")
    sagator_conf = write(tmp_path, "SCANNERS = [clamd(['localhost', 3310])]\n")
    probe = (
        "import sys\nfrom mailsift import config\nconfig.load(sys.argv[1])\n"
        "print('mailsift.compat.sagator' in sys.modules)\n"
    )
    env = {"MAILSIFT_STATE_DIR": str(tmp_path / "state"), "MAILSIFT_USER": "", "PATH": "/usr/bin:/bin"}
    for path, expected in ((native, "False"), (sagator_conf, "True")):
        done = subprocess.run(
            [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, env=env, cwd=REPO, check=True
        )
        assert done.stdout.strip() == expected, done.stderr


# --------------------------------------------------------------------------- the mapped names


def test_clamav_with_a_command_line_is_clamscan_with_its_options() -> None:
    scanner = sagator.clamav(["/usr/bin/clamscan", "--stdout", "--infected", "--disable-summary", "-r", "--mbox"])
    assert isinstance(scanner, clamscan)
    assert scanner.args == ["/usr/bin/clamscan", "--no-summary", "--stdout", "--infected", "-"]
    kept = sagator.clamav(["/usr/bin/clamscan", "--max-filesize=10M", "--stdout"])
    assert isinstance(kept, clamscan)
    assert kept.args == ["/usr/bin/clamscan", "--no-summary", "--stdout", "--infected", "--max-filesize=10M", "-"]


def test_clamav_with_an_address_is_clamd() -> None:
    by_tcp = sagator.clamav(["localhost", 3310])
    by_socket = sagator.clamav("/var/run/clamav/clamd.ctl", timeout=30.0)
    assert isinstance(by_tcp, clamd)
    assert by_tcp.describe() == "clamd(localhost:3310)"
    assert isinstance(by_socket, clamd)
    assert "/var/run/clamav/clamd.ctl" in by_socket.describe()
    assert isinstance(sagator.clamav(), clamd)


def test_milter_and_smtpd_without_scanners_take_the_configs_scanners(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "SMTP_SERVER = ('127.0.0.1', 26)\nSCANNERS = [clamd(['localhost', 3310])]\n"
        "SRV = [milter('sagator', 'inet:3333@127.0.0.1'), smtpd('127.0.0.1', 25), lmtpd('127.0.0.1', 24)]\n",
    )
    milter_service, smtpd_service, lmtpd_service = config.services
    assert milter_service.scanners == config.scanners
    assert (milter_service.host, milter_service.port) == ("127.0.0.1", 3333)
    assert milter_service.name == "sagator"  # type: ignore[attr-defined]
    assert smtpd_service.scanners == config.scanners
    assert (smtpd_service.host, smtpd_service.port) == ("127.0.0.1", 25)
    assert lmtpd_service.scanners == config.scanners


def test_milter_without_scanners_before_scanners_says_so_at_its_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "SRV = [milter('sagator', 'inet:3333@127.0.0.1')]\n")
    assert message == (
        f"{tmp_path / 'sagator.conf'}:3: milter('sagator', ...) without scanners uses SCANNERS: "
        "define SCANNERS before SRV"
    )


def test_webq_jinja_takes_sagators_positional_arguments(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "SRV = [webq_jinja('127.0.0.1', 8009, db.sqlite('webq.db'), '/var/log/sagator/webq.log',\n"
        "                  clamd(['localhost', 3310]), ['^([^@]+)$', r'\\1@example.com'])]\n",
    )
    (service,) = config.services
    assert isinstance(service, webq)
    assert (service.host, service.port) == ("127.0.0.1", 8009)
    assert isinstance(service.scanners[0], clamd)
    assert config.settings.database is not None
    assert config.settings.database.describe().endswith("/state/webq.db")  # its db is DATABASE
    (note,) = sagator.warnings(config.path, None, config.objects())
    assert note == (
        f"{config.path}:3: warning: webq_jinja(..., log='/var/log/sagator/webq.log'): webq logs to mailsift's "
        "service log; that file is not written"
    )


def test_webq_jinja_keeps_the_configs_database(tmp_path: Path) -> None:
    config = load(
        tmp_path, "DATABASE = db.sqlite('main.db')\nSRV = [webq_jinja('127.0.0.1', 8009, db.sqlite('w.db'))]\n"
    )
    assert config.settings.database is not None
    assert config.settings.database.describe().endswith("/state/main.db")


def test_webq_jinja_request_handler_has_no_equivalent(tmp_path: Path) -> None:
    message = error_of(tmp_path, "SRV = [webq_jinja(request_handler=object)]\n")
    assert message.endswith("webq's pages are mailsift's; leave it out")
    assert message.startswith(f"{tmp_path / 'sagator.conf'}:3: webq_jinja: request_handler")


def test_collector_is_the_stats_hook_and_leaves_srv(tmp_path: Path) -> None:
    config = load(tmp_path, "SRV = [collector('0.0.0.0', 28)]\n")
    assert config.services == ()
    (hook,) = config.settings.hooks
    assert isinstance(hook, stats)
    notes = sagator.warnings(config.path, config.lines.get("SRV"), config.objects())
    assert notes == [
        f"{config.path}:3: warning: collector() is stats() in HOOKS: counters in DATABASE, shown by "
        "`mailsift stats` and webq's graphs and /metrics (its socket 0.0.0.0:28 is not opened)"
    ]


def test_collector_beside_a_stats_hook_adds_none(tmp_path: Path) -> None:
    config = load(tmp_path, "HOOKS = [stats()]\nSRV = [collector()]\n")
    assert [type(h) for h in config.settings.hooks] == [stats]


def test_collector_with_a_statfile_says_it_is_not_written(tmp_path: Path) -> None:
    config = load(tmp_path, "SRV = [collector('', -1, '/tmp/status')]\n")
    (note,) = sagator.warnings(config.path, config.lines.get("SRV"), config.objects())
    assert note == (
        f"{config.path}:3: warning: collector() is stats() in HOOKS: counters in DATABASE, shown by "
        "`mailsift stats` and webq's graphs and /metrics; statfile='/tmp/status' is not written (no status "
        "file: the counters are in DATABASE)"
    )


def test_collector_and_a_stat_wrapper_count_once(tmp_path: Path) -> None:
    """collector() is a stats(): a stat(...) wrapper beside it adds no second counter (each message once)."""
    config = load(tmp_path, "SCANNERS = [stat(const(1.0, 'X'))]\nSRV = [collector()]\n")
    assert [type(h) for h in config.settings.hooks] == [sagator.collector]


@pytest.mark.parametrize(
    ("wrapper", "hook_name", "shown"),
    [
        ("report('admin@example.test', {s})", "notify", "report('admin@example.test', ...): this argument is"),
        ("report_recipients(1, {s})", "notify", "report_recipients(1, ...): this argument is"),
        ("stat('x', 2, {s})", "stats", "stat('x', 2, ...): these arguments are"),
    ],
)
def test_arguments_before_a_reporting_wrappers_scanners_are_named_as_unused(
    tmp_path: Path, wrapper: str, hook_name: str, shown: str
) -> None:
    scanner = wrapper.format(s="const(1.0, 'Found.Here')")
    config = load(tmp_path, f"SMTP_SERVER = ('127.0.0.1', 26)\nSCANNERS = [{scanner}]\n")
    notes = sagator.warnings(config.path, None, config.objects())
    name = wrapper.partition("(")[0]
    assert (
        f"{config.path}:4: warning: {shown} not used: {name}() takes only scanners; {hook_name}() in HOOKS does "
        "its work (give its options there)"
    ) in notes
    assert len(notes) == 2  # and the hook added


@pytest.mark.parametrize(
    ("wrapper", "hook_type"),
    [
        ("log(1, log.SUMMARY_REPORT, {s})", log_sql),
        ("log(1, '{dir}/scan.log', {s})", log_file),
        ("log_sql({s})", log_sql),
        ("log_syslog({s})", log_syslog),
        ("report({s})", notify),
        ("report_recipients({s})", notify),
        ("stat({s})", stats),
    ],
)
def test_a_logging_wrapper_passes_its_result_and_adds_its_hook(
    tmp_path: Path, wrapper: str, hook_type: type[Any]
) -> None:
    scanner = wrapper.format(s="const(1.0, 'Found.Here')", dir=tmp_path)
    config = load(tmp_path, f"SMTP_SERVER = ('127.0.0.1', 26)\nSCANNERS = [{scanner}]\n")
    (hook,) = config.settings.hooks
    assert type(hook) is hook_type
    result = asyncio.run(config.scanners[0].scan(MailTarget(Mail(data=b"Subject: x\r\n\r\nbody\r\n"))))
    assert (result.level, result.name) == (1.0, "Found.Here")
    (note,) = sagator.warnings(config.path, None, config.objects())
    assert note.startswith(f"{config.path}:4: warning: {wrapper.partition('(')[0]}(...) wraps scanners to log, ")
    assert re.search(rf"disposition, for every message: {hook_type.__name__}\(.*\) added to HOOKS$", note)


def test_log_without_a_target_is_the_service_log_and_adds_no_hook(tmp_path: Path) -> None:
    config = load(tmp_path, "SCANNERS = [log(1, const(1.0, 'Found.Here'))]\n")
    assert config.settings.hooks == ()
    (note,) = sagator.warnings(config.path, None, config.objects())
    assert note == (
        f"{config.path}:3: warning: log(...) without a target: mailsift's service log (logger mailsift.mail) has "
        "a line for every message already; log_file(...) or log_sql() in HOOKS for more"
    )


def test_report_recipients_notifies_the_recipients(tmp_path: Path) -> None:
    config = load(tmp_path, "SMTP_SERVER = ('127.0.0.1', 26)\nSCANNERS = [report_recipients(const(1.0, 'X'))]\n")
    (hook,) = config.settings.hooks
    assert isinstance(hook, notify)
    assert hook.describe() != notify().describe()


def test_a_hook_of_the_same_kind_in_hooks_is_kept_and_none_added(tmp_path: Path) -> None:
    config = load(tmp_path, "HOOKS = [log_sql()]\nSCANNERS = [log(1, log.SUMMARY_REPORT, const(0.0))]\n")
    assert len(config.settings.hooks) == 1
    assert isinstance(config.settings.hooks[0], log_sql)


def test_buffer2file_and_mimeparse_pass_their_scanners_through(tmp_path: Path) -> None:
    config = load(tmp_path, "SCANNERS = [mimeparse(buffer2file(const(1.0, 'X'))), file2buffer(const(0.0))]\n")
    assert config.scanners[0].name == "parsemail"
    assert config.scanners[0].children[0].name == "buffer2file"
    assert sagator.core_count() >= 1


# --------------------------------------------------------------------------- http_proxy: the ICAP service


class _StubIcap(Service):
    """services/icap.py's icap(scanners, host='127.0.0.1', port=1344, **options), as its helper builds it."""

    kind = "icap"

    def __init__(self, scanners: Any, host: str = "127.0.0.1", port: int = 1344, **options: Any) -> None:
        super().__init__(scanners, host, port)
        self.options = options


def test_http_proxy_is_the_icap_service_on_icaps_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a stub of services/icap.py (merged separately: the examples' test covers the real one)."""
    stub = types.ModuleType("mailsift.services.icap")
    stub.icap = _StubIcap  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mailsift.services.icap", stub)
    config = load(
        tmp_path, "SCANNERS = [clamd(['localhost', 3310])]\nSRV = [http_proxy(SCANNERS, '0.0.0.0', 3128, prefork=4)]\n"
    )
    (service,) = config.services
    assert isinstance(service, _StubIcap)
    assert (service.host, service.port, service.options) == ("0.0.0.0", 1344, {})
    assert service.scanners == config.scanners
    (note,) = sagator.warnings(config.path, config.lines.get("SRV"), config.objects())
    assert note == (
        f"{config.path}:4: warning: http_proxy(SCANNERS, '0.0.0.0', 3128) is icap(SCANNERS, '0.0.0.0', 1344): "
        "Squid listens on port 3128 (http_port 3128) and sends each download to icap://127.0.0.1:1344/respmod "
        "(icap_service ... respmod_precache; README: Coming from SAGATOR); "
        "prefork=4 is not used (workers: `mailsift serve --workers N`)"
    )


def test_http_proxy_without_the_icap_service_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mailsift.services.icap", None)  # an import of it fails
    message = error_of(tmp_path, "SRV = [http_proxy([clamd()], '127.0.0.1', 3128)]\n")
    assert message == (
        f"{tmp_path / 'sagator.conf'}:3: http_proxy() is the ICAP service (icap(SCANNERS, host, 1344) behind "
        "Squid), which this mailsift does not have yet"
    )


# --------------------------------------------------------------------------- gone, and added by issue 16


@pytest.mark.parametrize("name", sorted(sagator.GONE))
def test_a_gone_engine_or_service_names_its_line_and_replacement(tmp_path: Path, name: str) -> None:
    message = error_of(tmp_path, f"SCANNERS = []\nSCANNERS = [{name}(['localhost', 1234])]\n")
    gone = sagator.GONE[name]
    assert message == f"{tmp_path / 'sagator.conf'}:4: {name}() is gone from mailsift ({gone.what}): use {gone.instead}"


@pytest.mark.parametrize("name", ["nod2", "scand", "libclam"])
def test_a_gone_name_in_a_native_config_gets_the_same_message(tmp_path: Path, name: str) -> None:
    message = error_of(tmp_path, f"SCANNERS = [{name}()]\n", head="from mailsift import *\n")
    assert message == f"{tmp_path / 'sagator.conf'}:2: {sagator.gone_message(name)}"


@pytest.mark.parametrize("head", [HEAD, "from mailsift import *\n\n"], ids=["sagator", "native"])
def test_every_gone_name_of_a_config_is_in_the_one_error(tmp_path: Path, head: str) -> None:
    """One check-config run lists all that must change: the first at its line, each other name with its lines."""
    body = "SCANNERS = [\n    nod2(),\n    sophie(),\n    parsemail(nod2()),\n    nod2(),\n]\n"
    message = error_of(tmp_path, body, head=head)
    assert message == (
        f"{tmp_path / 'sagator.conf'}:4: nod2() is gone from mailsift (ESET NOD32's nod32d): use "
        "cmd(['/path/to/scanner', ..., '{file}'], result_regex) with the vendor's command-line scanner, "
        "or clamd(...) (also lines 6, 7); line 5: sophie() is gone from mailsift (Sophos through the sophie "
        "daemon): use cmd(['/path/to/scanner', ..., '{file}'], result_regex) with the vendor's command-line "
        "scanner, or clamd(...)"
    )


def test_a_name_the_config_defines_itself_is_its_own(tmp_path: Path) -> None:
    config = load(tmp_path, "def nod2():\n    return clamd(['localhost', 3310])\n\nSCANNERS = [nod2()]\n")
    assert isinstance(config.scanners[0], clamd)


def test_a_name_error_that_is_not_gone_stays_a_name_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, "SCANNERS = [no_such_scanner()]\n", head="from mailsift import *\n")
    assert message == f"{tmp_path / 'sagator.conf'}:2: NameError: name 'no_such_scanner' is not defined"


def test_check_config_names_the_line_and_the_replacement(tmp_path: Path) -> None:
    path = write(tmp_path, "SCANNERS = [\n    parsemail(nod2()),\n]\n")
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 2
    assert f"{path}:4: nod2() is gone from mailsift (ESET NOD32's nod32d): use cmd([" in result.output
    assert "or clamd(...)" in result.output


ADDED_BY_ISSUE_16 = {
    "modify_header": "scanners",
    "remove_headers": "scanners",
    "deliver_to": "scanners",
    "sanitize": "scanners",
    "sql_find": "scanners",
    "regexp_find": "scanners",
    "check_level": "scanners",
    "smtp_comm": "scanners",
    "recipient_policy": "srv",
    "fusefs": "srv",
    "rlimit": "srv",
}
"""SAGATOR names mailsift lacked before issue 16 (once a table of "not in this mailsift yet"), and
the module SAGATOR has them in."""


@pytest.mark.parametrize("name", sorted(ADDED_BY_ISSUE_16))
def test_a_name_issue_16_added_is_the_native_one_in_its_sagator_module(name: str) -> None:
    made = sagator.modules()
    module = ADDED_BY_ISSUE_16[name]
    assert getattr(made[module], name) is getattr(mailsift, name)
    assert getattr(made["avlib"], name) is getattr(mailsift, name)
    assert name not in sagator.GONE
    assert sagator.gone_message(name) is None


# --------------------------------------------------------------------------- check-config: SAGATOR's process counts


def test_check_config_warns_that_prefork_and_max_children_are_not_used(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "SMTP_SERVER = ('127.0.0.1', 26)\nSCANNERS = [clamd(['localhost', 3310])]\n"
        "SRV = [smtpd(SCANNERS, '127.0.0.1', 27, 4),\n"
        "       smtpd_policy([greylist()], db.sqlite(), '127.0.0.1', 29, max_children=200)]\n",
    )
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        f"{path}:5: warning: smtpd(127.0.0.1:27): prefork=4 is SAGATOR's process count and is not used: every "
        "service is served by `mailsift serve --workers N` worker processes (default: one per core)"
    ) in result.output
    assert "max_children=200 is SAGATOR's process count and is not used" in result.output


def test_a_native_config_without_prefork_gets_no_such_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "SMTP_SERVER = ('127.0.0.1', 26)\nSRV = [smtpd([clamd(['localhost', 3310])], '127.0.0.1', 27)]\n",
        head="from mailsift import *\n",
    )
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


# --------------------------------------------------------------------------- the reference's names


def _reference_names() -> set[str]:
    """Every scanner of the README's table (4.) and every service of sagator-services.txt."""
    reference = REPO.parent / "shared" / "reference"
    if not reference.exists():
        pytest.skip(f"the reference is not beside the repository ({reference})")
    readme = (reference / "sagator-readme.txt").read_text(encoding="utf-8")
    services = (reference / "sagator-services.txt").read_text(encoding="utf-8")
    names = set(re.findall(r"\| (\w+)\(\) \| \w+ \|", readme))
    names |= set(re.findall(r"(?:^|\| )(\w+)\(\) \| [A-Z]", services))
    return names


def test_every_name_the_reference_gives_is_mapped_native_or_gone() -> None:
    names = _reference_names()
    assert len(names) > 60
    made = sagator.modules()
    surface = set(made["avlib"].__all__)
    unknown = sorted(names - surface)
    assert unknown == []
    for name in sorted(names & set(sagator.GONE)):
        assert sagator.gone_message(name) is not None
        assert not hasattr(mailsift, name)


def test_the_readme_lists_every_gone_name_with_its_replacement() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Coming from SAGATOR") :]
    section = section[: section.index("\n## ")]
    gone_rows = [line for line in section.splitlines() if line.startswith("| `") and "|---" not in line]
    listed = {name for row in gone_rows for name in re.findall(r"`(\w+)`", row.split(" | ")[0])}
    assert set(sagator.GONE) <= listed
    for name, gone in sagator.GONE.items():
        row = next(r for r in gone_rows if f"`{name}`" in r.split(" | ")[0])
        replacement = gone.instead.split(" with ")[0].split(" (")[0].split(" to ")[0].split(", or ")[0]
        assert replacement.split("(")[0] in row, (name, replacement, row)
