# mailsift default configuration (bundled; used when no -c is given).
#
# Listens on 127.0.0.1:10024 as an SMTP content filter, delivers accepted mail
# into Maildirs under STATE_DIR/mail/<recipient>/, and keeps quarantined mail
# under STATE_DIR/quarantine/<category>/.  It starts its own clamd and spamd
# (see SRV) and scans with them.  The web quarantine answers on
# http://127.0.0.1:10080/ (loopback only); `mailsift user add admin --admin`
# creates its first login (`serve` says so when it starts).  Copy this file, edit it, and run
# `mailsift check-config -c yourfile.py`, then `mailsift serve -c yourfile.py`.
#
# To use a clamd or spamd you already run instead of mailsift's own: point
# CLAMD / SPAMD at it (e.g. CLAMD = "/run/clamav/clamd.ctl", SPAMD =
# ("127.0.0.1", 783)) and remove clamd_daemon / spamd_daemon from SRV.
import os

from mailsift import *

# Where mailsift keeps its state (quarantine, local mail, spool, its clamd).
STATE_DIR = os.path.abspath(os.environ.get("MAILSIFT_STATE_DIR", "var"))

# Started as root, the supervisor stays root (sockets, daemons) and the workers
# run as this unprivileged user (scripts/setup.sh creates it); started as any
# other user, mailsift stays that user.  MAILSIFT_USER= (empty) keeps root.
USER = os.environ.get("MAILSIFT_USER", "mailsift" if os.geteuid() == 0 else "") or None

# mailsift's own clamd, on a unix socket in the state directory.  It uses the
# system's signatures when freshclam has fetched them (/var/lib/clamav), and
# otherwise test signatures only (EICAR, ClamAV's test file): the log says so.
CLAMD = os.path.join(STATE_DIR, "clamd", "clamd.sock")
# mailsift's own spamd (SpamAssassin), local tests only (no DNS lookups).
SPAMD = ("127.0.0.1", 10783)

# Messages up to smtpd's 50 MB limit are scanned whole by clamd.
MAX_SIZE = 50 * 1024 * 1024

# File names a mail client would run: blocked wherever they hide (every
# candidate filename of every part, attached messages and uuencode included).
EXECUTABLES = r"\.(exe|com|scr|pif|bat|cmd|vbs|vbe|js|jse|wsf|wsh|lnk|hta|cpl|msi|jar)$"

# One SpamAssassin check per message, shared by the two spam rules below.
SPAM = cache(spamassassind(SPAMD), size=1024)

# SQLite in STATE_DIR: the quarantine index, web users, white/black lists, the
# message log and the statistics.
DATABASE = db.sqlite()

# After each message: a row in the message log (the web's tracking page) and
# the counters behind the web's graphs.
HOOKS = [log_sql(), stats()]

SCANNERS = [
    # The white/black lists ("Whitelist sender" in the web quarantine, `mailsift lists`):
    # whitelisted senders are delivered unscanned, blacklisted ones rejected.
    listed(),
    # Viruses (clamd unpacks MIME and archives itself): kept in quarantine/virus.
    quarantine("virus", clamd(CLAMD, stream_max_length=MAX_SIZE)),
    # Executable attachments are refused with a clear reason.
    reject(
        parsemail(mime_ext(EXECUTABLES, "Policy.Executable")), message="Executable attachments are not accepted (%V)"
    ),
    # Spam at twice SpamAssassin's threshold (level 2.0, e.g. 10/5): kept in quarantine/spam.
    quarantine("spam", SPAM * const(0.5)),
    # Spam at its threshold: delivered, tagged (%L level, %D score and rule names).
    deliver(modify_subject("[SPAM] ", add_header("X-Spam-Flag", "YES", add_header("X-Spam-Status", "%L %D", SPAM)))),
]

SRV = [
    smtpd(SCANNERS, "127.0.0.1", 10024, next_hop=local_maildir("mail"), max_size=MAX_SIZE),
    # The web quarantine, on loopback only (its signing secret: STATE_DIR/webq.secret, made at first start).
    webq("127.0.0.1", 10080),
    clamd_daemon(CLAMD, stream_max_length="50M"),
    spamd_daemon(SPAMD),
]
