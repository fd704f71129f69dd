# mailsift default configuration (bundled; used when no -c is given).
#
# Listens on 127.0.0.1:10024 as an SMTP content filter, delivers accepted mail
# into Maildirs under STATE_DIR/mail/<recipient>/, and keeps quarantined mail
# under STATE_DIR/quarantine/<category>/.  Copy this file, edit it, and run
# `mailsift check-config -c yourfile.py`, then `mailsift serve -c yourfile.py`.
import os

from mailsift import *

# Where mailsift keeps its state (quarantine, local mail, spool).
STATE_DIR = os.environ.get("MAILSIFT_STATE_DIR", "var")

# File names a mail client would run: blocked wherever they hide (every
# candidate filename of every part, attached messages and uuencode included).
EXECUTABLES = r"\.(exe|com|scr|pif|bat|cmd|vbs|vbe|js|jse|wsf|wsh|lnk|hta|cpl|msi|jar)$"

SCANNERS = [
    # The EICAR test string anywhere in the message or a decoded part: quarantined.
    quarantine("virus", parsemail(regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]))),
    # Executable attachments are refused with a clear reason.
    reject(parsemail(mime_ext(EXECUTABLES, "Policy.Executable")), message="Executable attachments are not accepted (%V)"),
]

SRV = [
    smtpd(SCANNERS, "127.0.0.1", 10024, next_hop=local_maildir("mail")),
]
