# SAGATOR example: sagator-services.txt milter() (milter support service)
# reference: milter(SCANNERS, "sagator", "inet:3333@127.0.0.1")
# expect: loads
from scanners import *
from srv import *

# given: what the example uses
SCANNERS = [clamd(["localhost", 3310])]

# the example, in SRV
SRV = [milter(SCANNERS, "sagator", "inet:3333@127.0.0.1")]
