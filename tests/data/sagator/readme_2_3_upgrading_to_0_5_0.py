# SAGATOR example: sagator-readme.txt 2.3 (upgrading to SAGATOR 0.5.0: COLLECTOR_SERVER and BIND_ADDR become SRV)
# reference: SRV=[ collector(COLLECTOR_SERVER[0],COLLECTOR_SERVER[1]), smtpd(SCANNERS,BIND_ADDR[0],BIND_ADDR[1]) ]
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
COLLECTOR_SERVER = ("127.0.0.1", 28)
BIND_ADDR = ("127.0.0.1", 27)
SMTP_SERVER = ("127.0.0.1", 26)
SCANNERS = [parsemail(clamd(["localhost", 3310]))]

# the example
SRV=[ collector(COLLECTOR_SERVER[0],COLLECTOR_SERVER[1]), smtpd(SCANNERS,BIND_ADDR[0],BIND_ADDR[1]) ]
