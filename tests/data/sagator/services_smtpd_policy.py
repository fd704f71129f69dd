# SAGATOR example: sagator-services.txt smtpd_policy() (SMTP policy service for Postfix)
# reference: smtpd_policy(SCANNERS, db.sqlite(), '127.0.0.1', 29)
# expect: loads
from scanners import *
from srv import *

# given: what the example uses (policy scanners)
SCANNERS = [greylist()]

# the example, in SRV
SRV = [smtpd_policy(SCANNERS, db.sqlite(), '127.0.0.1', 29)]
