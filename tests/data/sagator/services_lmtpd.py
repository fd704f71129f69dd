# SAGATOR example: sagator-services.txt lmtpd() (LMTP daemon service)
# reference: lmtpd(SCANNERS, '127.0.0.1', 27)
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
SMTP_SERVER = ("127.0.0.1", 26)
SCANNERS = [clamd(["localhost", 3310])]

# the example, in SRV
SRV = [lmtpd(SCANNERS, '127.0.0.1', 27)]
