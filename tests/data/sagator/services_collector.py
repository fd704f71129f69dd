# SAGATOR example: sagator-services.txt collector() (statistics collector, statistics from the file only)
# reference: collector()
# expect: loads
from scanners import *
from srv import *

# the example, in SRV
SRV = [collector()]
