# SAGATOR example: sagator-readme.txt 3.1 a) (smtpd service with a collector for statistics)
# reference: SRV=[ collector('0.0.0.0',28), smtpd(SCANNERS,'127.0.0.1',27) ]
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
SMTP_SERVER = ("127.0.0.1", 26)
SCANNERS = [parsemail(clamd(["localhost", 3310]))]

# the example
SRV=[ collector('0.0.0.0',28), smtpd(SCANNERS,'127.0.0.1',27) ]
