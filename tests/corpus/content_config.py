# The corpus tests' config: every content scanner mailsift has that needs no
# daemon (the bundled default config starts clamd and spamd; see
# tests/integration/test_default_config.py), as an admin would combine them.
import os

from mailsift import *

STATE_DIR = os.environ.get("MAILSIFT_STATE_DIR", "var")
EICAR = regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")])
EXECUTABLES = r"\.(exe|com|scr|pif|bat|cmd|vbs|vbe|js|jse|wsf|wsh|lnk|hta|cpl|msi|jar)$"

SCANNERS = [
    # the EICAR string in any part, view, archive member (nested), or the raw message
    quarantine("virus", parsemail(decompress(EICAR), raw=True)),
    # executables by name, and executables or scripts disguised as something else
    reject(parsemail(mime_ext(EXECUTABLES, "Policy.Executable"))),
    reject(parsemail(decompress(file_type()))),
    # qmail-scanner's format checks that real mail does not trip
    reject(bad_mime(skip=["part_header", "double_boundary", "filename_conflict"])),
    # Office macros that run on open and do suspicious things
    quarantine("policy", parsemail(decompress(office_macros("suspicious")))),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", 10024, next_hop=local_maildir("mail"))]
