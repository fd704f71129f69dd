"""mailsift: a mail content-filtering gateway, heir of SAGATOR.

``from mailsift import *`` in a config file gives every scanner, action and
service by its SAGATOR name.  This list is the config surface; it is guarded by
``tests/unit/test_init.py``.
"""

from mailsift.core.poison import poison
from mailsift.delivery.next_hop import lmtp_relay, local_maildir, smtp_relay
from mailsift.message.result import Result
from mailsift.reporting.archive import archive, monitor
from mailsift.reporting.counters import stats
from mailsift.reporting.digest import reporter
from mailsift.reporting.logline import log_file, log_sql, log_syslog
from mailsift.reporting.notifications import notify
from mailsift.reporting.spam_forward import spam_forward
from mailsift.scanners.actions import (
    add_header,
    deliver,
    deliver_to,
    drop,
    modify_header,
    modify_subject,
    quarantine,
    reject,
    remove_headers,
    rename,
)
from mailsift.scanners.archive import decompress
from mailsift.scanners.badmime import bad_mime
from mailsift.scanners.base import Scanner
from mailsift.scanners.basic import const, max_file_size, regexp_scan, sender_regexp, string_scan
from mailsift.scanners.client import client_network, trusted_clients
from mailsift.scanners.engines.clamav import clamd
from mailsift.scanners.engines.command import bogofilter, clamscan, cmd, cmd_clamav
from mailsift.scanners.engines.rspamd import rspamd
from mailsift.scanners.engines.spamassassin import spamassassind
from mailsift.scanners.engines.spamlevels import spam_levels
from mailsift.scanners.filetype import file_magic, file_type
from mailsift.scanners.find import check_level, regexp_find, sql_find
from mailsift.scanners.greylist import greylist, recipient_regexp
from mailsift.scanners.match import alternatives, cache, match_all, match_any, nothing, recover, time_limit
from mailsift.scanners.office import office_macros
from mailsift.scanners.parsemail import attach_name, mime_ext, parsemail
from mailsift.scanners.sanitize import sanitize
from mailsift.scanners.smtpcomm import smtp_comm
from mailsift.scanners.stamp import stamp
from mailsift.scanners.tempfail import tempfail
from mailsift.scanners.userpolicy import (
    blacklisted,
    listed,
    policy_attach,
    policy_enabled,
    policy_spam_hits,
    whitelisted,
)
from mailsift.services.daemons import chroot_execvp, chroot_execvpe, clamd_daemon, rlimit, spamd_daemon
from mailsift.services.fusefs import fusefs
from mailsift.services.icap import icap
from mailsift.services.lmtpd import lmtpd
from mailsift.services.milter import milter
from mailsift.services.postfix_policy import smtpd_policy
from mailsift.services.rcptpolicy import recipient_policy
from mailsift.services.sgfilterd import sgfilterd
from mailsift.services.smtpd import smtpd
from mailsift.storage import db
from mailsift.version import __version__ as __version__
from mailsift.web.service import webq

__all__ = [
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
]
