# SAGATOR example: sagator-readme.txt 3.1 b) (lmtpd service: different scanners for each recipient)
# reference: SRV=[ collector('0.0.0.0', 28), lmtpd(LMTP_SCANNERS, '0.0.0.0', 27) ]
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
SMTP_SERVER = ("127.0.0.1", 26)
SCANNERS = [parsemail(clamd(["localhost", 3310]))]
LMTP_SCANNERS = {r"@example\.com$": SCANNERS + [spamassassind(["localhost", 783])], "default": SCANNERS}

# the example
SRV=[ collector('0.0.0.0', 28), lmtpd(LMTP_SCANNERS, '0.0.0.0', 27) ]
