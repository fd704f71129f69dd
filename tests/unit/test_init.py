"""The config surface: what ``from mailsift import *`` gives a config file.

The exact set is asserted, so adding or removing a public name is a deliberate
act that shows up in this file (httpx's ``test_exported_members.py`` habit).
"""

from __future__ import annotations

import mailsift
from mailsift.scanners.base import Scanner

EXPORTED = {
    "Result",
    "Scanner",
    "add_header",
    "alternatives",
    "archive",
    "attach_name",
    "bad_mime",
    "blacklisted",
    "bogofilter",
    "cache",
    "check_level",
    "chroot_execvp",
    "chroot_execvpe",
    "clamd",
    "clamd_daemon",
    "clamscan",
    "client_network",
    "cmd",
    "cmd_clamav",
    "const",
    "db",
    "decompress",
    "deliver",
    "deliver_to",
    "drop",
    "file_magic",
    "file_type",
    "fusefs",
    "greylist",
    "icap",
    "listed",
    "lmtp_relay",
    "lmtpd",
    "local_maildir",
    "log_file",
    "log_sql",
    "log_syslog",
    "match_all",
    "match_any",
    "max_file_size",
    "milter",
    "mime_ext",
    "modify_header",
    "modify_subject",
    "monitor",
    "nothing",
    "notify",
    "office_macros",
    "parsemail",
    "poison",
    "policy_attach",
    "policy_enabled",
    "policy_spam_hits",
    "quarantine",
    "recipient_policy",
    "recipient_regexp",
    "recover",
    "regexp_find",
    "regexp_scan",
    "reject",
    "remove_headers",
    "rename",
    "reporter",
    "rlimit",
    "rspamd",
    "sanitize",
    "sender_regexp",
    "sgfilterd",
    "smtp_comm",
    "smtp_relay",
    "smtpd",
    "smtpd_policy",
    "spam_forward",
    "spam_levels",
    "spamassassind",
    "spamd_daemon",
    "sql_find",
    "stamp",
    "stats",
    "string_scan",
    "tempfail",
    "time_limit",
    "trusted_clients",
    "webq",
    "whitelisted",
}

SERVICES = {
    "smtpd",
    "icap",
    "lmtpd",
    "sgfilterd",
    "milter",
    "smtpd_policy",
    "recipient_policy",
    "chroot_execvp",
    "chroot_execvpe",
    "clamd_daemon",
    "spamd_daemon",
    "fusefs",
    "reporter",
    "rlimit",
    "webq",
}
HOOKS = {"stats", "archive", "notify", "spam_forward", "log_syslog", "log_file", "log_sql"}
SETTINGS = {"poison"}  # the values of global settings (POISON = poison(...))
SCANNERS = (
    EXPORTED - {"Result", "Scanner", "local_maildir", "smtp_relay", "lmtp_relay", "db"} - SERVICES - HOOKS - SETTINGS
)


def test_all_is_exactly_the_config_surface() -> None:
    assert set(mailsift.__all__) == EXPORTED
    assert len(mailsift.__all__) == len(EXPORTED)  # no duplicates
    assert mailsift.__all__ == sorted(mailsift.__all__)


def test_star_import_gives_every_name() -> None:
    namespace: dict[str, object] = {}
    exec("from mailsift import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == EXPORTED
    for name in EXPORTED:
        assert namespace[name] is getattr(mailsift, name)


def test_every_scanner_name_is_a_documented_scanner_class() -> None:
    for name in SCANNERS:
        value = getattr(mailsift, name)
        assert isinstance(value, type), name
        assert issubclass(value, Scanner), name
        assert value.name == name, f"{name}.name is {value.name!r}: the config name and the reported name differ"
        assert value.__doc__, f"{name} has no docstring"


def test_every_exported_name_is_documented() -> None:
    for name in EXPORTED:
        assert getattr(mailsift, name).__doc__, name
