# SAGATOR example: sagator-services.txt fusefs() (fuse filesystem with antivirus checking)
# reference: fusefs(SCANNERS, '/home', '/realhome')
# expect: pending fusefs
from scanners import *
from srv import *

# given: what the example uses
SCANNERS = [clamd(["localhost", 3310])]

# the example, in SRV
SRV = [fusefs(SCANNERS, '/home', '/realhome')]
