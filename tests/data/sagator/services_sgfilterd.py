# SAGATOR example: sagator-services.txt sgfilterd() (filter data sent by the sgfilter command)
# reference: sgfilterd(SCANNERS)
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
SMTP_SERVER = ("127.0.0.1", 26)
SCANNERS = [clamd(["localhost", 3310])]

# the example, in SRV
SRV = [sgfilterd(SCANNERS)]
