# A config for the CLI tests: no daemons, so nothing is started (the bundled
# default config starts clamd and spamd; tests/integration/test_default_config.py
# covers it).
import os

from mailsift import *

STATE_DIR = os.environ.get("MAILSIFT_STATE_DIR", "var")
EXECUTABLES = r"\.(exe|com|scr|pif|bat|cmd|vbs|vbe|js|jse|wsf|wsh|lnk|hta|cpl|msi|jar)$"
SCANNERS = [
    quarantine("virus", parsemail(regexp_scan([("EICAR-Test", r"EICAR-STANDARD-ANTIVIRUS-TEST-FILE")]))),
    reject(
        parsemail(mime_ext(EXECUTABLES, "Policy.Executable")), message="Executable attachments are not accepted (%V)"
    ),
]
SRV = [smtpd(SCANNERS, "127.0.0.1", 10024, next_hop=local_maildir("mail"))]
